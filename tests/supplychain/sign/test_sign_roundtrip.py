"""Signing then verifying: every serialization and hash type, folders and single files, and
the exact shape of the bundle (the OpenSSF model-signing v1.0 format)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from bastion.errors import InputError
from bastion.supplychain.sign import (
    PREDICATE_TYPE,
    VerificationError,
    sign,
    verify,
    verify_model,
)
from bastion.supplychain.sign.bundle import BUNDLE_MEDIA_TYPE, PAYLOAD_TYPE, pae
from bastion.supplychain.sign.keys import load_public_key, verifies


def test_round_trip_files_writes_model_sig_inside_folder(model, key_pair, model_files):
    result = sign(model, key_pair.private)
    assert result.signature == model / "model.sig"
    assert result.files == len(model_files)
    assert result.bytes == sum(len(v) for v in model_files.values())
    verified = verify(model, key_pair.public)
    assert verified.files == len(model_files)
    assert verified.digest == result.digest
    assert verified.signer.startswith("key ")


@pytest.mark.parametrize("hash_type", ["sha256", "blake2b", "blake3"])
def test_round_trip_every_hash_type(model, key_pair, hash_type):
    sign(model, key_pair.private, hash_type=hash_type)
    assert verify(model, key_pair.public).hash_type == hash_type


@pytest.mark.parametrize("hash_type", ["sha256", "blake2b"])
def test_round_trip_shards(model, key_pair, hash_type, model_files):
    result = sign(model, key_pair.private, method="shards", shard_size=1000, hash_type=hash_type)
    sizes = [len(v) for v in model_files.values()]
    assert result.resources == sum(-(-s // 1000) for s in sizes)
    verified = verify(model, key_pair.public)
    assert (verified.method, verified.resources) == ("shards", result.resources)


def test_single_file_signature_lives_beside_it(tmp_path, key_pair):
    data = tmp_path / "train.csv"
    data.write_bytes(b"x,y\n1,0\n")
    result = sign(data, key_pair.private)
    assert result.signature == tmp_path / "train.csv.sig"
    assert verify(data, key_pair.public).files == 1
    data.write_bytes(b"x,y\n1,1\n")
    with pytest.raises(VerificationError, match=r"^file changed: train\.csv$"):
        verify(data, key_pair.public)


def test_verify_model_is_the_loading_hook(model, key_pair, model_files):
    sign(model, key_pair.private)
    assert verify_model(model, key_pair.public).files == len(model_files)
    (model / "config.json").write_bytes(b"{}")
    with pytest.raises(VerificationError) as failed:
        verify_model(model, key_pair.public)
    assert str(failed.value) == "file changed: config.json"


def test_signature_outside_folder_and_explicit_path(model, key_pair, tmp_path, model_files):
    out = tmp_path / "sigs" / "m.bundle"
    sign(model, key_pair.private, out)
    assert out.exists() and not (model / "model.sig").exists()
    assert verify(model, key_pair.public, out).files == len(model_files)


def test_git_metadata_and_signature_are_excluded(model, key_pair, statement_of):
    sign(model, key_pair.private)
    statement = statement_of(model / "model.sig")
    names = [r["name"] for r in statement["predicate"]["resources"]]
    assert not any(n.startswith(".git") or n == "model.sig" for n in names)
    ignored = statement["predicate"]["serialization"]["ignore_paths"]
    assert {".git", ".gitattributes", ".github", ".gitignore", "model.sig"} <= set(ignored)
    (model / ".git" / "HEAD").write_bytes(b"changed")
    verify(model, key_pair.public)


def test_ignore_patterns_record_the_concrete_paths(
    model, key_pair, statement_of, model_files, write_tree
):
    write_tree(model, {"logs/run1.log": b"1", "weights/debug.log": b"2", "a/__pycache__/x": b"3"})
    sign(model, key_pair.private, ignore=["*.log", "__pycache__", "logs"])
    ignored = statement_of(model / "model.sig")["predicate"]["serialization"]["ignore_paths"]
    assert {"logs", "weights/debug.log", "a/__pycache__"} <= set(ignored)
    assert verify(model, key_pair.public).files == len(model_files)
    # What was ignored stays ignored on verification, but a new file matching the pattern
    # was never signed: it is extra, exactly as model-signing would see it.
    (model / "weights" / "debug.log").write_bytes(b"changed")
    verify(model, key_pair.public)
    (model / "new.log").write_bytes(b"new")
    with pytest.raises(VerificationError) as failed:
        verify(model, key_pair.public)
    assert str(failed.value) == "extra file not covered by the signature: new.log"
    assert verify(model, key_pair.public, ignore=["new.log"]).files == len(model_files)


def test_bundle_shape_matches_the_model_signing_format(model, key_pair, model_files):
    sign(model, key_pair.private)
    bundle = json.loads((model / "model.sig").read_text())
    assert bundle["mediaType"] == BUNDLE_MEDIA_TYPE
    public = load_public_key(key_pair.public)
    pem_hash = hashlib.sha256(Path(key_pair.public).read_bytes()).hexdigest()
    assert bundle["verificationMaterial"] == {"publicKey": {"hint": pem_hash}, "tlogEntries": []}
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == PAYLOAD_TYPE
    payload = base64.b64decode(envelope["payload"])
    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    assert verifies(public, signature, pae(PAYLOAD_TYPE, payload))
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE == "https://model_signing/signature/v1.0"
    resources = statement["predicate"]["resources"]
    names = [r["name"] for r in resources]
    assert names == [
        "README.md",
        "config.json",
        "tokenizer/vocab.txt",
        "weights/model-00001.safetensors",
        "weights/model-00002.safetensors",
    ]
    for resource in resources:
        assert resource["algorithm"] == "sha256"
        assert resource["digest"] == hashlib.sha256(model_files[resource["name"]]).hexdigest()
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert statement["subject"] == [{"name": "model", "digest": {"sha256": root}}]
    serialization = statement["predicate"]["serialization"]
    assert serialization["method"] == "files"
    assert serialization["hash_type"] == "sha256"
    assert serialization["allow_symlinks"] is False


def test_resources_sort_by_path_components_like_the_peer(
    tmp_path, key_pair, statement_of, write_tree
):
    # '-' sorts before '/' as a character, but 'a' < 'a-c' as a component: the peer orders
    # by components, and the subject digest depends on that order.
    root = write_tree(tmp_path / "m", {"a/b": b"1", "a-c": b"2", "a.b": b"3"})
    sign(root, key_pair.private)
    names = [r["name"] for r in statement_of(root / "model.sig")["predicate"]["resources"]]
    assert names == ["a/b", "a-c", "a.b"]


def test_shard_names_and_algorithm(tmp_path, key_pair, statement_of, write_tree):
    root = write_tree(tmp_path / "m", {"w.bin": bytes(2500), "empty": b""})
    sign(root, key_pair.private, method="shards", shard_size=1000)
    predicate = statement_of(root / "model.sig")["predicate"]
    assert predicate["serialization"]["shard_size"] == 1000
    assert [(r["name"], r["algorithm"]) for r in predicate["resources"]] == [
        ("w.bin:0:1000", "sha256-sharded-1000"),
        ("w.bin:1000:2000", "sha256-sharded-1000"),
        ("w.bin:2000:2500", "sha256-sharded-1000"),
    ]
    assert predicate["resources"][2]["digest"] == hashlib.sha256(bytes(500)).hexdigest()


def test_single_file_resource_is_named_dot(tmp_path, key_pair, statement_of):
    data = tmp_path / "w.bin"
    data.write_bytes(b"abc")
    sign(data, key_pair.private)
    statement = statement_of(tmp_path / "w.bin.sig")
    assert statement["subject"][0]["name"] == "w.bin"
    assert [r["name"] for r in statement["predicate"]["resources"]] == ["."]


def test_an_empty_file_has_no_shard_as_in_model_signing(tmp_path, key_pair, write_tree):
    # A format fact, kept for compatibility: `shards` lists no resource for an empty file,
    # so adding or removing one is invisible there. `files` (the default) covers it.
    root = write_tree(tmp_path / "m", {"w.bin": b"abc", "empty": b""})
    sign(root, key_pair.private, method="shards", shard_size=2)
    (root / "empty").unlink()
    verify(root, key_pair.public)
    sign(root, key_pair.private)
    (root / "empty").write_bytes(b"")
    with pytest.raises(VerificationError, match="extra file not covered by the signature: empty"):
        verify(root, key_pair.public)


def test_symlinks_are_hashed_as_targets_only_when_allowed(tmp_path, key_pair, write_tree):
    root = write_tree(tmp_path / "m", {"real.bin": b"weights"})
    (root / "link.bin").symlink_to(root / "real.bin")
    with pytest.raises(InputError, match=r"symlink refused: link\.bin"):
        sign(root, key_pair.private)
    sign(root, key_pair.private, allow_symlinks=True)
    assert verify(root, key_pair.public, allow_symlinks=True).files == 2
    with pytest.raises(VerificationError, match=r"^symlink refused: link\.bin"):
        verify(root, key_pair.public)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "layers"}, "unknown method 'layers'"),
        ({"hash_type": "md5"}, "unknown hash type 'md5'"),
        ({"method": "shards", "hash_type": "blake3"}, "blake3 is parallel by itself"),
        ({"method": "shards", "shard_size": 0}, "shard size must be positive"),
    ],
)
def test_bad_sign_options_are_input_errors(model, key_pair, options, message):
    with pytest.raises(InputError, match=message):
        sign(model, key_pair.private, **options)
    assert not (model / "model.sig").exists()


def test_missing_artifact_and_missing_signature_are_input_errors(tmp_path, key_pair, model):
    with pytest.raises(InputError, match="no such file or folder"):
        sign(tmp_path / "nope", key_pair.private)
    with pytest.raises(InputError, match="no signature at"):
        verify(model, key_pair.public)
    with pytest.raises(InputError, match="needs a public key"):
        verify(model)
