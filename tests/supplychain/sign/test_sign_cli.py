"""`bastion sign`, `bastion verify` and `bastion keys generate` through the real command line:
exit 0 when verified, 1 with one line when verification fails, 2 for bad input."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, [str(a) for a in args], env=env)


@pytest.fixture
def cli_keys(tmp_path):
    result = run("keys", "generate", "--out", tmp_path / "keys" / "signer.pem")
    assert result.exit_code == 0, result.output
    assert "unencrypted private key" in result.stdout
    return tmp_path / "keys" / "signer.pem", tmp_path / "keys" / "signer.pub"


def test_sign_then_verify_exit_zero(model, cli_keys):
    private, public = cli_keys
    signed = run("sign", model, "--key", private)
    assert signed.exit_code == 0, signed.output
    assert signed.stdout.startswith(f"signed {model}: 5 files")
    verified = run("verify", model, "--key", public)
    assert verified.exit_code == 0, verified.output
    assert f"verified {model}: 5 files" in verified.stdout
    assert "files/sha256, signed by key " in verified.stdout


def test_failed_verification_is_one_line_and_exit_one(model, cli_keys):
    private, public = cli_keys
    run("sign", model, "--key", private)
    (model / "config.json").write_bytes(b'{"layers": 3}')
    result = run("verify", model, "--key", public)
    assert result.exit_code == 1
    assert result.stderr == "bastion: verification failed: file changed: config.json\n"


def test_wrong_key_exits_one(model, cli_keys, other_key_pair):
    private, _ = cli_keys
    run("sign", model, "--key", private)
    result = run("verify", model, "--key", other_key_pair.public)
    assert result.exit_code == 1
    assert "was not made with the key" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "{model}", "--key", "{public}"], "no signature at"),
        (["verify", "{missing}", "--key", "{public}"], "no such file or folder"),
        (["verify", "{model}"], "needs a public key"),
        (["sign", "{model}", "--key", "{missing}"], "no such private key file"),
        (["sign", "{model}", "--key", "{private}", "--method", "layers"], "unknown method"),
        (["sign", "{model}", "--key", "{private}", "--hash", "md5"], "unknown hash type"),
    ],
)
def test_bad_input_exits_two(model, cli_keys, tmp_path, args, message):
    private, public = cli_keys
    values = {"model": model, "public": public, "private": private, "missing": tmp_path / "nope"}
    result = run(*[a.format(**values) for a in args])
    assert result.exit_code == 2
    assert result.stderr.startswith("bastion: error: ")
    assert message in result.stderr


def test_symlink_needs_allow_symlinks(model, cli_keys):
    private, public = cli_keys
    (model / "alias.json").symlink_to(model / "config.json")
    refused = run("sign", model, "--key", private)
    assert refused.exit_code == 2
    assert "symlink refused: alias.json" in refused.stderr
    assert run("sign", model, "--key", private, "--allow-symlinks").exit_code == 0
    assert run("verify", model, "--key", public, "--allow-symlinks").exit_code == 0
    refused = run("verify", model, "--key", public)
    assert refused.exit_code == 1
    assert "symlink refused: alias.json" in refused.stderr


def test_shards_ignore_and_explicit_signature(model, cli_keys, tmp_path):
    private, public = cli_keys
    (model / "notes.tmp").write_bytes(b"scratch")
    out = tmp_path / "bundle.json"
    args = ["--method", "shards", "--shard-size", "1000", "--ignore", "*.tmp"]
    signed = run("sign", model, "--key", private, "--signature", out, *args)
    assert signed.exit_code == 0, signed.output
    assert "shards/sha256" in signed.stdout
    verified = run("verify", model, "--key", public, "--signature", out)
    assert verified.exit_code == 0, verified.output


def test_encrypted_key_from_environment(model, tmp_path):
    env = {"MY_PASS": "s3cret passphrase"}
    key = tmp_path / "enc.pem"
    generated = run(
        "keys", "generate", "--out", key, "--encrypt", "--passphrase-env", "MY_PASS", env=env
    )
    assert generated.exit_code == 0, generated.output
    assert "encrypted private key" in generated.stdout
    no_secret = run("sign", model, "--key", key, "--passphrase-env", "MY_PASS")
    assert no_secret.exit_code == 2
    assert "is encrypted" in no_secret.stderr
    signed = run("sign", model, "--key", key, "--passphrase-env", "MY_PASS", env=env)
    assert signed.exit_code == 0, signed.output
    assert run("verify", model, "--key", tmp_path / "enc.pub").exit_code == 0


def test_encrypt_without_passphrase_or_terminal_is_refused(tmp_path):
    result = run(
        "keys",
        "generate",
        "--out",
        tmp_path / "k.pem",
        "--encrypt",
        env={"BASTION_KEY_PASSPHRASE": ""},
    )
    assert result.exit_code == 2
    assert "--encrypt needs a passphrase" in result.stderr
    assert not (tmp_path / "k.pem").exists()


def test_certificate_signing_and_chain_verification(model, pki):
    signed = run(
        "sign",
        model,
        "--key",
        pki.leaf_key,
        "--certificate",
        pki.leaf,
        "--certificate-chain",
        pki.intermediate,
    )
    assert signed.exit_code == 0, signed.output
    verified = run("verify", model, "--certificate-chain", pki.root)
    assert verified.exit_code == 0, verified.output
    assert "signed by certificate CN=model-publisher" in verified.stdout
    untrusted = run("verify", model, "--certificate-chain", pki.stranger_root)
    assert untrusted.exit_code == 1
    assert "is not trusted" in untrusted.stderr


def test_ledger_records_key_sign_and_both_verification_outcomes(model, tmp_path):
    from bastion.govern.events import file_digest
    from bastion.govern.ledger import Ledger

    ledger = tmp_path / "audit.db"
    assert run("ledger", "init", ledger).exit_code == 0
    key = tmp_path / "k.pem"
    assert run("keys", "generate", "--out", key, "--ledger", ledger).exit_code == 0
    assert run("sign", model, "--key", key, "--ledger", ledger).exit_code == 0
    assert run("verify", model, "--key", tmp_path / "k.pub", "--ledger", ledger).exit_code == 0
    signature_digest = file_digest(model / "model.sig")
    (model / "config.json").write_bytes(b"changed")
    assert run("verify", model, "--key", tmp_path / "k.pub", "--ledger", ledger).exit_code == 1
    with Ledger.open(ledger) as opened:
        events = [entry.event for entry in opened.entries()]
    assert [e["kind"] for e in events] == ["key-event", "sign", "verify", "verify"]
    assert events[0]["subjects"][0]["digest"] == file_digest(tmp_path / "k.pub")
    assert {e["subjects"][0]["digest"] for e in events[1:]} == {signature_digest}
    assert events[2]["details"]["verified"] is True
    assert events[3]["details"] == {
        "path": str(model), "verified": False, "reason": "file changed: config.json"
    }


def test_missing_ledger_fails_before_signing(model, cli_keys, tmp_path):
    private, _ = cli_keys
    result = run("sign", model, "--key", private, "--ledger", tmp_path / "none.db")
    assert result.exit_code == 2
    assert "no ledger at" in result.output
    assert not (model / "model.sig").exists()
