"""Interoperability with the OpenSSF `model-signing` package (sigstore/model-transparency),
run from its own virtual environment (.venv-bench, made by `bash bench/setup-peers.sh`):
Bastion's bundles verify with the peer, and the peer's bundles verify with Bastion, for
`files` and `shards` serialization, folders and single files, keys and certificates.

The peer's command line only hashes with its default (`files`, sha256); `shards` goes through
its Python API with an explicit shard size, as its own documentation shows."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bastion.supplychain.sign import VerificationError, sign, verify

REPO = Path(__file__).resolve().parents[3]
PEER_BIN = REPO / ".venv-bench" / "bin"
PEER_CLI = PEER_BIN / "model_signing"
PEER_PYTHON = PEER_BIN / "python"

# The peer's API for shards (its command line has only `files`), shared with bench/sign.
PEER_SHARDS = REPO / "bench" / "sign" / "peer_shards.py"


@pytest.fixture(scope="module", autouse=True)
def peer() -> None:
    """The peer must be installed: these tests fail, never skip, when it is missing."""
    if not PEER_CLI.exists() or not PEER_PYTHON.exists():
        pytest.fail(
            f"model-signing is not installed in {PEER_BIN.parent}: run bash bench/setup-peers.sh"
        )


def peer_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PEER_CLI), *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def peer_shards(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PEER_PYTHON), str(PEER_SHARDS), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def test_bastion_files_bundle_verifies_with_peer_cli(model, key_pair):
    sign(model, key_pair.private)
    result = peer_cli(
        "verify", "key", model, "--signature", model / "model.sig", "--public_key", key_pair.public
    )
    assert_ok(result)
    assert "Verification succeeded" in result.stdout
    (model / "weights" / "model-00002.safetensors").write_bytes(b"swapped")
    result = peer_cli(
        "verify", "key", model, "--signature", model / "model.sig", "--public_key", key_pair.public
    )
    assert result.returncode == 1
    assert "Hash mismatch for" in result.stderr
    assert "weights/model-00002.safetensors" in result.stderr


def test_peer_cli_bundle_verifies_with_bastion(model, key_pair):
    assert_ok(
        peer_cli(
            "sign",
            "key",
            model,
            "--signature",
            model / "model.sig",
            "--private_key",
            key_pair.private,
        )
    )
    assert verify(model, key_pair.public).files == 5
    (model / "config.json").write_bytes(b"{}")
    with pytest.raises(VerificationError) as failed:
        verify(model, key_pair.public)
    assert str(failed.value) == "file changed: config.json"


def test_bastion_ignore_patterns_are_honoured_by_peer(model, key_pair, write_tree):
    write_tree(model, {"logs/a.log": b"1", "weights/b.log": b"2"})
    sign(model, key_pair.private, ignore=["*.log", "logs"])
    (model / "weights" / "b.log").write_bytes(b"changed")
    assert_ok(
        peer_cli(
            "verify",
            "key",
            model,
            "--signature",
            model / "model.sig",
            "--public_key",
            key_pair.public,
        )
    )


def test_bastion_shards_bundle_verifies_with_peer(model, key_pair, tmp_path):
    signature = tmp_path / "shards.sig"
    sign(model, key_pair.private, signature, method="shards", shard_size=1000)
    assert_ok(peer_shards("verify", model, signature, key_pair.public, 1000))
    (model / "weights" / "model-00001.safetensors").write_bytes(b"\x00" * 10240)
    result = peer_shards("verify", model, signature, key_pair.public, 1000)
    assert result.returncode != 0
    assert "Signature mismatch" in result.stderr


def test_peer_shards_bundle_verifies_with_bastion(model, key_pair, tmp_path):
    signature = tmp_path / "shards.sig"
    assert_ok(peer_shards("sign", model, signature, key_pair.private, 1000))
    result = verify(model, key_pair.public, signature)
    assert (result.method, result.resources) == ("shards", 20)
    with open(model / "weights" / "model-00001.safetensors", "r+b") as handle:
        handle.seek(2500)
        handle.write(b"X")
    with pytest.raises(VerificationError) as failed:
        verify(model, key_pair.public, signature)
    assert str(failed.value) == "file changed: weights/model-00001.safetensors (bytes 2000-3000)"


def test_single_file_both_ways(tmp_path, key_pair):
    data = tmp_path / "dataset.csv"
    data.write_bytes(b"x,y\n" + b"1,0\n" * 500)
    sign(data, key_pair.private)
    assert_ok(
        peer_cli(
            "verify",
            "key",
            data,
            "--signature",
            tmp_path / "dataset.csv.sig",
            "--public_key",
            key_pair.public,
        )
    )
    peer_signature = tmp_path / "peer.sig"
    assert_ok(
        peer_cli(
            "sign", "key", data, "--signature", peer_signature, "--private_key", key_pair.private
        )
    )
    assert verify(data, key_pair.public, peer_signature).files == 1


def test_certificate_bundles_both_ways(model, pki, tmp_path):
    sign(model, pki.leaf_key, certificate=pki.leaf, certificate_chain=[pki.intermediate])
    assert_ok(
        peer_cli(
            "verify",
            "certificate",
            model,
            "--signature",
            model / "model.sig",
            "--certificate_chain",
            pki.root,
        )
    )
    peer_signature = tmp_path / "peer-cert.sig"
    assert_ok(
        peer_cli(
            "sign",
            "certificate",
            model,
            "--signature",
            peer_signature,
            "--private_key",
            pki.leaf_key,
            "--signing_certificate",
            pki.leaf,
            "--certificate_chain",
            pki.intermediate,
        )
    )
    verified = verify(model, signature=peer_signature, certificate_chain=[pki.root])
    assert verified.signer == "certificate CN=model-publisher"


def test_peer_is_the_real_package():
    result = subprocess.run(
        [str(PEER_PYTHON), "-c", "import model_signing; print(model_signing.__version__)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert_ok(result)
    assert result.stdout.strip().split(".")[0] == "1"
