"""`bastion scan` end to end through the real command line: exit codes, formats, --out."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()


def _payload(marker: Path) -> bytes:
    """Protocol 0 pickle calling os.system('touch MARKER'), assembled from opcodes."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


@pytest.fixture
def models(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "models"
    (folder / "nested").mkdir(parents=True)
    (folder / "clean.pkl").write_bytes(pickle.dumps({"layer": [0.5, 0.25]}, protocol=4))
    (folder / "nested" / "weights.bin").write_bytes(_payload(marker))
    return folder


def test_clean_file_exits_zero(models: Path) -> None:
    result = runner.invoke(app, ["scan", str(models / "clean.pkl")])
    assert result.exit_code == 0, result.output
    assert "No findings at or above high" in result.output


def test_malicious_file_in_subfolder_exits_one(models: Path) -> None:
    result = runner.invoke(app, ["scan", str(models), "--format", "json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert [f["rule_id"] for f in document["findings"]] == ["BST-SCAN-PKL-001"]
    assert document["findings"][0]["location"]["path"].endswith("nested/weights.bin")


def test_fail_on_critical_still_fails_and_fail_on_is_respected(models: Path) -> None:
    assert runner.invoke(app, ["scan", str(models), "--fail-on", "critical"]).exit_code == 1
    low_only = runner.invoke(app, ["scan", str(models / "clean.pkl"), "--fail-on", "info"])
    assert low_only.exit_code == 0


def test_out_writes_sarif_file(models: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "scan.sarif"
    result = runner.invoke(app, ["scan", str(models), "-f", "sarif", "-o", str(out)])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert json.loads(out.read_text())["version"] == "2.1.0"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary file left"


def test_missing_path_is_one_line_and_exit_two(tmp_path: Path) -> None:
    result = runner.invoke(app, ["scan", str(tmp_path / "absent.pt")])
    assert result.exit_code == 2
    assert "absent.pt: no such file or directory" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-on", "severe"], "unknown severity"),
        (["--format", "xml"], "unknown format"),
    ],
)
def test_bad_options_exit_two(models: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["scan", str(models), *args])
    assert result.exit_code == 2
    assert message in result.output


def test_no_paths_is_a_usage_error() -> None:
    assert runner.invoke(app, ["scan"]).exit_code == 2


def test_trust_lowers_own_package_classes(tmp_path: Path) -> None:
    own = tmp_path / "own.pkl"
    # mypkg.Net.__new__(mypkg.Net), protocol 4: STACK_GLOBAL, EMPTY_TUPLE, NEWOBJ.
    own.write_bytes(b"\x80\x04\x8c\x05mypkg\x94\x8c\x03Net\x94\x93\x94)\x81\x94.")
    assert runner.invoke(app, ["scan", str(own)]).exit_code == 1
    assert runner.invoke(app, ["scan", str(own), "--trust", "mypkg"]).exit_code == 0
