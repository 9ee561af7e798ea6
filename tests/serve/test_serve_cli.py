"""`bastion api-keys` and `bastion serve` from the command line: keys stored hashed, unsafe
binds and unsafe model files refused with one line and exit code 2."""

from __future__ import annotations

import json
import os
import pickle
import stat

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.cli.serve import check_bind, is_loopback

runner = CliRunner()


def test_api_keys_create_list_revoke(tmp_path):
    keys = tmp_path / "keys.json"
    created = runner.invoke(app, ["api-keys", "create", "--name", "alice", "--keys", str(keys),
                                  "--scope", "infer", "--rate", "5", "--daily-budget", "100"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert token.startswith("bst_")
    text = keys.read_text()
    assert token not in text and token.split("_", 2)[2] not in text  # only the hash is kept
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    listed = runner.invoke(app, ["api-keys", "list", "--keys", str(keys)])
    record = json.loads(listed.stdout)
    assert record["name"] == "alice" and record["scopes"] == ["infer"]
    assert record["daily_budget"] == 100 and "digest" not in record
    revoked = runner.invoke(app, ["api-keys", "revoke", record["id"], "--keys", str(keys)])
    assert revoked.exit_code == 0
    assert json.loads(runner.invoke(app, ["api-keys", "list", "--keys", str(keys)]).stdout)[
        "revoked"] is True


def test_api_key_events_go_to_the_ledger_without_the_key(tmp_path):
    from bastion.govern.ledger import Ledger

    keys, ledger = tmp_path / "keys.json", tmp_path / "audit.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    created = runner.invoke(app, ["api-keys", "create", "--name", "bob", "--keys", str(keys),
                                  "--ledger", str(ledger)])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    key_id = json.loads(runner.invoke(app, ["api-keys", "list", "--keys", str(keys)]).stdout)["id"]
    revoked = runner.invoke(app, ["api-keys", "revoke", key_id, "--keys", str(keys),
                                  "--ledger", str(ledger)])
    assert revoked.exit_code == 0, revoked.output
    with Ledger.open(ledger) as opened:
        events = [entry.event for entry in opened.entries()]
    assert [(e["kind"], e["details"]["action"]) for e in events] == [
        ("key-event", "create"), ("key-event", "revoke")]
    assert {e["subjects"][0]["name"] for e in events} == {f"api-key {key_id}"}
    assert token.split("_", 2)[2] not in ledger.read_bytes().decode("latin-1")
    missing = runner.invoke(app, ["api-keys", "create", "--name", "eve", "--keys", str(keys),
                                  "--ledger", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "no ledger at" in missing.output
    assert "eve" not in keys.read_text()  # nothing created when the record cannot be kept


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["api-keys", "create", "--name", "x", "--scope", "admin"], "unknown scope"),
        (["api-keys", "create", "--name", "x", "--rate", "0"], "--rate"),
        (["api-keys", "revoke", "nosuchid"], "no API key"),
    ],
)
def test_api_keys_bad_input(tmp_path, args, message):
    keys = tmp_path / "keys.json"
    runner.invoke(app, ["api-keys", "create", "--name", "a", "--keys", str(keys)])
    result = runner.invoke(app, [*args, "--keys", str(keys)])
    assert result.exit_code == 2 and message in result.output


def test_corrupt_key_file_is_one_line(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text("{not json")
    result = runner.invoke(app, ["api-keys", "list", "--keys", str(keys)])
    assert result.exit_code == 2 and "not a Bastion API key file" in result.output


def test_bind_policy(capsys):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    check_bind("127.0.0.1", tls=False, insecure=False)
    check_bind("0.0.0.0", tls=True, insecure=False)
    check_bind("0.0.0.0", tls=False, insecure=True)
    assert "WARNING" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve plain HTTP"),
        (["--tls-cert", "c.pem"], "go together"),
        (["--output-policy", "blur"], "output policy"),
        (["--monitor", "shout"], "--monitor"),
        (["--store", "mongodb://x"], "--store"),
        (["--input-range", "5:1"], "LOW must be below HIGH"),
        (["--ledger", "missing.db"], "no ledger"),
    ],
)
def test_serve_refuses_bad_options(tmp_path, monkeypatch, digits, extra, message):
    keys = tmp_path / "keys.json"
    runner.invoke(app, ["api-keys", "create", "--name", "a", "--keys", str(keys)])
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", str(digits.path), "--keys", str(keys), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_serve_refuses_a_malicious_model_before_loading(tmp_path, marker):
    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    model = tmp_path / "model.pkl"
    model.write_bytes(pickle.dumps(Payload()))
    keys = tmp_path / "keys.json"
    runner.invoke(app, ["api-keys", "create", "--name", "a", "--keys", str(keys)])
    result = runner.invoke(app, ["serve", str(model), "--keys", str(keys)])
    assert result.exit_code == 2 and "refusing to load" in result.output
    assert not marker.exists()


def test_serve_needs_exactly_one_target(tmp_path):
    result = runner.invoke(app, ["serve", "--keys", str(tmp_path / "k.json")])
    assert result.exit_code == 2 and "either a MODEL file or --upstream" in result.output
