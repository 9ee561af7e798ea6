"""`bastion ledger ...` and `bastion scan --ledger` through the real command line."""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()
DATASET = "sha256:" + "ab" * 32


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    result = run("ledger", "init", str(path), "--origin", "acme.example/ml")
    assert result.exit_code == 0, result.output
    return path


def test_init_append_log_verify(ledger: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    result = run(
        "ledger",
        "append",
        str(ledger),
        "--kind",
        "train",
        "--actor",
        "ana",
        "--file",
        str(model),
        "--parent",
        DATASET,
        "--details",
        '{"epochs": 3}',
    )
    assert result.exit_code == 0, result.output
    assert "appended entry 0, checkpoint signed at size 1" in result.output
    result = run("ledger", "log", str(ledger), "--subject", DATASET, "--json")
    event = json.loads(result.output)["event"]
    assert event["kind"] == "train" and event["parents"] == [DATASET]
    assert event["details"] == {"epochs": 3}
    result = run("ledger", "verify", str(ledger))
    assert result.exit_code == 0
    assert "ledger OK: 1 entries" in result.output


def test_append_event_file_and_bad_events(ledger: Path, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"kind": "deploy", "actor": "ci", "parents": [DATASET]}))
    assert run("ledger", "append", str(ledger), "--event", str(event)).exit_code == 0
    bad = run("ledger", "append", str(ledger), "--kind", "party", "--actor", "x")
    assert bad.exit_code == 2 and "not one of" in bad.output
    bad = run("ledger", "append", str(ledger), "--kind", "scan", "--parent", "md5:00")
    assert bad.exit_code == 2 and "sha256:" in bad.output
    bad = run("ledger", "append", str(ledger), "--kind", "scan", "--details", "[1,")
    assert bad.exit_code == 2 and "not valid JSON" in bad.output
    event.write_text(json.dumps({"kind": "deploy", "actor": "ci", "time": "yesterday"}))
    bad = run("ledger", "append", str(ledger), "--event", str(event))
    assert bad.exit_code == 2 and "ISO-8601" in bad.output


def test_verify_fails_with_one_line_and_exit_1(ledger: Path) -> None:
    for i in range(3):
        run("ledger", "append", str(ledger), "--kind", "scan", "--actor", f"a{i}")
    db = sqlite3.connect(ledger)
    db.execute("DROP TRIGGER entries_append_only_update")
    db.execute("UPDATE entries SET body = replace(body, 'a1', 'zz') WHERE idx = 1")
    db.commit()
    db.close()
    result = run("ledger", "verify", str(ledger))
    assert result.exit_code == 1
    assert "entry 1" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_bad_input_exits_2(ledger: Path, tmp_path: Path) -> None:
    assert run("ledger", "verify", str(tmp_path / "absent.db")).exit_code == 2
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\x00garbage" * 512)
    result = run("ledger", "verify", str(junk), "--key", f"{ledger}.pub")
    assert result.exit_code == 2 and "not a Bastion ledger" in result.output
    other = tmp_path / "other.db"
    assert run("ledger", "init", str(other)).exit_code == 0
    result = run("ledger", "verify", str(ledger), "--key", f"{other}.pub")
    assert result.exit_code == 2 and "not the checkpoint key" in result.output
    result = run("ledger", "checkpoint", str(ledger), "--key", f"{other}.key")
    assert result.exit_code == 2
    assert run("ledger", "init", str(ledger)).exit_code == 2
    assert run("ledger", "prove", str(ledger)).exit_code == 2


def test_prove_and_check_with_the_standalone_verifier(ledger: Path, tmp_path: Path) -> None:
    for i in range(5):
        run("ledger", "append", str(ledger), "--kind", "scan", "--actor", f"a{i}")
    proof = tmp_path / "proof.json"
    assert run("ledger", "prove", str(ledger), "--index", "3", "-o", str(proof)).exit_code == 0
    assert json.loads(proof.read_text())["tree_size"] == 5
    module = [sys.executable, "-m", "bastion.govern.verify_proof"]
    assert subprocess.run([*module, str(proof)], capture_output=True).returncode == 0
    result = run("ledger", "prove", str(ledger), "--consistency", "2", "5")
    consistency = tmp_path / "consistency.json"
    consistency.write_text(result.output)
    assert subprocess.run([*module, str(consistency)], capture_output=True).returncode == 0


def test_checkpoint_and_export(ledger: Path, tmp_path: Path) -> None:
    run("ledger", "append", str(ledger), "--kind", "sign", "--actor", "x", "--no-checkpoint")
    result = run("ledger", "verify", str(ledger))
    assert "1 newer entries not yet signed" in result.output
    result = run("ledger", "checkpoint", str(ledger))
    assert result.exit_code == 0 and result.output.startswith("acme.example/ml\n1\n")
    out = tmp_path / "export.jsonl"
    assert run("ledger", "export", str(ledger), "-o", str(out)).exit_code == 0
    assert len(out.read_text().splitlines()) == 3


def test_scan_records_an_event(ledger: Path, tmp_path: Path) -> None:
    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    result = run("scan", str(model), "--ledger", str(ledger), "-f", "json")
    assert result.exit_code == 0, result.output
    log = run("ledger", "log", str(ledger), "--kind", "scan", "--json")
    event = json.loads(log.output)["event"]
    assert event["subjects"][0]["name"] == str(model)
    assert event["subjects"][0]["digest"].startswith("sha256:")
    assert event["details"]["files"] == 1
    assert set(event["details"]["findings"]) == {"info", "low", "medium", "high", "critical"}
    assert run("ledger", "verify", str(ledger)).exit_code == 0
