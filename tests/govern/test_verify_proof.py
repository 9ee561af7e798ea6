"""The standalone proof verifier: stdlib only, runnable on its own, strict about its input."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.govern import verify_proof

SOURCE = Path(verify_proof.__file__)


def test_imports_only_the_standard_library() -> None:
    tree = ast.parse(SOURCE.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"__future__", "base64", "hashlib", "json", "sys"}


@pytest.fixture
def proof(new_ledger, tmp_path: Path) -> Path:
    ledger = new_ledger(11)
    path = tmp_path / "proof.json"
    path.write_text(json.dumps(ledger.inclusion_proof(7)))
    return path


def run_copy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Run a copy of the file in isolated mode, as a third party without Bastion would."""
    copy = tmp_path / "third_party" / "verify_proof.py"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(SOURCE, copy)
    return subprocess.run(
        [sys.executable, "-I", str(copy), *args], capture_output=True, text=True, cwd=copy.parent
    )


def test_a_copy_of_the_file_checks_a_proof(proof: Path, tmp_path: Path) -> None:
    result = run_copy(tmp_path, str(proof))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK")
    root = json.loads(proof.read_text())["root_hash"]
    assert run_copy(tmp_path, str(proof), "--root", root).returncode == 0
    other = run_copy(tmp_path, str(proof), "--root", "00" * 32)
    assert other.returncode == 1 and "trusted root" in other.stdout


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("leaf_index", 6),
        ("tree_size", 12),
        ("root_hash", "11" * 32),
        ("leaf_hash", "22" * 32),
        ("entry", '{"forged":true}'),
    ],
)
def test_altered_proofs_fail(proof: Path, tmp_path: Path, field: str, value) -> None:
    document = json.loads(proof.read_text())
    document[field] = value
    proof.write_text(json.dumps(document))
    assert run_copy(tmp_path, str(proof)).returncode == 1


def test_a_proof_disagreeing_with_its_checkpoint_fails(proof: Path) -> None:
    document = json.loads(proof.read_text())
    document.pop("entry")
    document["checkpoint"] = document["checkpoint"].replace("\n11\n", "\n12\n")
    assert "checkpoint" in verify_proof.check(document)


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"type": "other"},
        {"type": "inclusion", "leaf_index": -1},
        {
            "type": "consistency",
            "old_size": 1,
            "new_size": 2,
            "old_root": "zz",
            "new_root": "00" * 32,
            "consistency_path": [],
        },
    ],
)
def test_malformed_proofs_exit_2(tmp_path: Path, document) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    result = run_copy(tmp_path, str(path))
    assert result.returncode == 2 and result.stderr.startswith("error:")


def test_unreadable_input_exits_2(tmp_path: Path) -> None:
    assert verify_proof.main([str(tmp_path / "absent.json")]) == 2
    (tmp_path / "x.json").write_text("{not json")
    assert verify_proof.main([str(tmp_path / "x.json")]) == 2
    assert verify_proof.main([]) == 2
