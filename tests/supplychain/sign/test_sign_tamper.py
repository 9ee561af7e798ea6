"""Every kind of tampering fails verification with its own exact message."""

from __future__ import annotations

import base64
import json
import os
import shutil

import pytest

from bastion.errors import InputError
from bastion.supplychain.sign import VerificationError, errors, sign, verify

GIB = 1 << 30


def failure(*args, **kwargs) -> VerificationError:
    with pytest.raises(VerificationError) as failed:
        verify(*args, **kwargs)
    return failed.value


def flip_byte(path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x01]))


def test_byte_flip_in_a_1gib_sparse_file(tmp_path, key_pair, sparse_file, write_tree):
    root = write_tree(tmp_path / "big", {"config.json": b"{}"})
    sparse_file(root / "big.bin", GIB)
    files_sig, shards_sig = tmp_path / "files.sig", tmp_path / "shards.sig"
    sign(root, key_pair.private, files_sig)
    sign(root, key_pair.private, shards_sig, method="shards", shard_size=GIB // 4)
    flip_byte(root / "big.bin", GIB // 4 + 12345)
    assert str(failure(root, key_pair.public, files_sig)) == "file changed: big.bin"
    assert str(failure(root, key_pair.public, shards_sig)) == (
        f"file changed: big.bin (bytes {GIB // 4}-{GIB // 2})"
    )


def test_file_added(model, key_pair):
    sign(model, key_pair.private)
    (model / "weights" / "backdoor.pkl").write_bytes(b"\x80\x04N.")
    error = failure(model, key_pair.public)
    assert str(error) == "extra file not covered by the signature: weights/backdoor.pkl"
    assert error.kinds == {errors.EXTRA}


def test_file_removed(model, key_pair):
    sign(model, key_pair.private)
    (model / "tokenizer" / "vocab.txt").unlink()
    error = failure(model, key_pair.public)
    assert str(error) == "file missing: tokenizer/vocab.txt"
    assert error.kinds == {errors.MISSING}


def test_file_renamed(model, key_pair):
    sign(model, key_pair.private)
    (model / "config.json").rename(model / "config.old.json")
    assert str(failure(model, key_pair.public)) == (
        "2 problems: file missing: config.json; "
        "extra file not covered by the signature: config.old.json"
    )


def test_symlink_swapped_in(model, key_pair, tmp_path):
    sign(model, key_pair.private)
    target = model / "weights" / "model-00001.safetensors"
    copy = tmp_path / "elsewhere.safetensors"
    shutil.copyfile(target, copy)
    target.unlink()
    target.symlink_to(copy)
    error = failure(model, key_pair.public)
    assert str(error) == (
        "symlink refused: weights/model-00001.safetensors "
        "(pass --allow-symlinks to follow symlinks)"
    )
    assert error.kinds == {errors.SYMLINK}
    # Allowed, a symlink to the same bytes verifies; to other bytes it is a changed file.
    verify(model, key_pair.public, allow_symlinks=True)
    copy.write_bytes(b"evil")
    error = failure(model, key_pair.public, allow_symlinks=True)
    assert str(error) == "file changed: weights/model-00001.safetensors"


def test_truncated_signature(model, key_pair):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    data = signature.read_bytes()
    signature.write_bytes(data[: len(data) // 2])
    error = failure(model, key_pair.public)
    assert error.kinds == {errors.MALFORMED}
    assert str(error).startswith(f"malformed signature bundle {signature}: not JSON")


def test_signature_for_another_folder(model, key_pair, tmp_path, write_tree):
    other = write_tree(tmp_path / "other", {"config.json": b"{}", "w.bin": b"w"})
    sign(other, key_pair.private)
    shutil.copyfile(other / "model.sig", model / "model.sig")
    error = failure(model, key_pair.public)
    assert error.kinds == {errors.CHANGED, errors.MISSING, errors.EXTRA}
    assert error.problems[0].message == "file changed: config.json"
    assert "file missing: w.bin" in str(error)
    assert "extra file not covered by the signature: README.md" in str(error)


def test_wrong_key(model, key_pair, other_key_pair):
    sign(model, key_pair.private)
    error = failure(model, other_key_pair.public)
    assert str(error) == (
        f"signature {model / 'model.sig'} was not made with the key {other_key_pair.public}"
    )
    assert error.kinds == {errors.WRONG_KEY}


def test_signature_swapped_for_another_keys_signature(model, key_pair, other_key_pair):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    bundle = json.loads(signature.read_text())
    sign(model, other_key_pair.private, model.parent / "other.sig")
    foreign = json.loads((model.parent / "other.sig").read_text())
    bundle["dsseEnvelope"]["signatures"] = foreign["dsseEnvelope"]["signatures"]
    signature.write_text(json.dumps(bundle))
    error = failure(model, key_pair.public)
    assert error.kinds == {errors.BAD_SIGNATURE}
    assert str(error) == (
        f"signature {signature} does not verify with {key_pair.public}: "
        "the bundle was altered or signed by another key"
    )


def test_altered_payload_is_a_bad_signature(model, key_pair, statement_of):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    statement["predicate"]["resources"].pop()
    bundle = json.loads(signature.read_text())
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    signature.write_text(json.dumps(bundle))
    assert failure(model, key_pair.public).kinds == {errors.BAD_SIGNATURE}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "mediaType",
            "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "bundle media type 'application/vnd.dev.sigstore.bundle+json;version=0.2' "
            "(expected v0.3)",
        ),
        ("dsseEnvelope", None, "bundle holds no DSSE envelope"),
    ],
)
def test_unsupported_bundle_versions(model, key_pair, field, value, message):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    bundle = json.loads(signature.read_text())
    if value is None:
        del bundle[field]
    else:
        bundle[field] = value
    signature.write_text(json.dumps(bundle))
    error = failure(model, key_pair.public)
    assert str(error) == f"unsupported signature version in {signature}: {message}"
    assert error.kinds == {errors.UNSUPPORTED}


def _edit(statement, path, value):
    *parents, last = path
    target = statement
    for key in parents:
        target = target[key]
    target[last] = value


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            ("predicateType",),
            "https://model_signing/Digests/v0.1",
            "predicate type 'https://model_signing/Digests/v0.1' (model_signing v0.x; re-sign it)",
        ),
        (("_type",), "https://in-toto.io/Statement/v0.1", "statement type"),
        (("predicate", "serialization", "method"), "tensors", "serialization method 'tensors'"),
        (("predicate", "serialization", "hash_type"), "md5", "hash type 'md5'"),
        (
            ("predicate", "resources", 0, "algorithm"),
            "sha512",
            "resource algorithm 'sha512' (serialization implies 'sha256')",
        ),
    ],
)
def test_unsupported_statement_versions(
    model, key_pair, statement_of, sign_statement, path, value, message
):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    _edit(statement, path, value)
    sign_statement(statement, signature)
    error = failure(model, key_pair.public)
    assert error.kinds == {errors.UNSUPPORTED}
    assert str(error).startswith(f"unsupported signature version in {signature}: {message}")


@pytest.mark.parametrize(
    "name", ["../outside.bin", "/etc/passwd", "weights/../../x", "a//b", "./config.json"]
)
def test_manifest_entry_escaping_the_folder(model, key_pair, statement_of, sign_statement, name):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    statement["predicate"]["resources"][0]["name"] = name
    sign_statement(statement, signature)
    error = failure(model, key_pair.public)
    assert str(error) == f"manifest entry escapes the folder: {name!r}"
    assert error.kinds == {errors.ESCAPE}


@pytest.mark.parametrize("ignored", ["..", "../elsewhere", "/", "."])
def test_ignore_path_escaping_the_folder(model, key_pair, statement_of, sign_statement, ignored):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    statement["predicate"]["serialization"]["ignore_paths"].append(ignored)
    sign_statement(statement, signature)
    assert str(failure(model, key_pair.public)) == f"manifest entry escapes the folder: {ignored!r}"


def test_escaping_shard_name(tmp_path, key_pair, statement_of, sign_statement, write_tree):
    root = write_tree(tmp_path / "m", {"w.bin": b"weights"})
    sign(root, key_pair.private, method="shards", shard_size=4)
    signature = root / "model.sig"
    statement = statement_of(signature)
    statement["predicate"]["resources"][0]["name"] = "../w.bin:0:4"
    sign_statement(statement, signature)
    assert (
        str(failure(root, key_pair.public)) == "manifest entry escapes the folder: '../w.bin:0:4'"
    )


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s["subject"].append(s["subject"][0]), "expected one subject, found 2"),
        (lambda s: s["predicate"].pop("resources"), "predicate has no 'resources'"),
        (
            lambda s: s["predicate"]["resources"].append(s["predicate"]["resources"][0]),
            "is listed twice",
        ),
        (
            lambda s: s["predicate"]["resources"][0].update(digest="zz" * 32),
            "is not 64 hex digits",
        ),
        (
            lambda s: s["predicate"]["serialization"].update(allow_symlinks="no"),
            "serialization.allow_symlinks is not a bool",
        ),
    ],
)
def test_malformed_manifests(model, key_pair, statement_of, sign_statement, mutate, reason):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    mutate(statement)
    sign_statement(statement, signature, keep_subject=True)
    error = failure(model, key_pair.public)
    assert error.kinds == {errors.MALFORMED}
    assert str(error).startswith(f"malformed signature bundle {signature}: ")
    assert reason in str(error)


def test_subject_digest_must_match_resources(model, key_pair, statement_of, sign_statement):
    sign(model, key_pair.private)
    signature = model / "model.sig"
    statement = statement_of(signature)
    statement["subject"][0]["digest"]["sha256"] = "00" * 32
    sign_statement(statement, signature, keep_subject=True)
    assert str(failure(model, key_pair.public)) == (
        f"malformed signature bundle {signature}: "
        "subject digest does not match the listed resources"
    )


def test_peer_style_float_shard_size_is_accepted(
    tmp_path, key_pair, statement_of, sign_statement, write_tree
):
    # model-signing writes numbers through a protobuf Struct: shard_size 1000 becomes 1000.0.
    root = write_tree(tmp_path / "m", {"w.bin": bytes(2500)})
    sign(root, key_pair.private, method="shards", shard_size=1000)
    signature = root / "model.sig"
    statement = statement_of(signature)
    statement["predicate"]["serialization"]["shard_size"] = 1000.0
    sign_statement(statement, signature)
    assert verify(root, key_pair.public).resources == 3


def test_shard_changes_name_the_bytes_and_sizes(tmp_path, key_pair, write_tree):
    root = write_tree(tmp_path / "m", {"w.bin": bytes(2500), "v.bin": b"abc"})
    sign(root, key_pair.private, method="shards", shard_size=1000)
    flip_byte(root / "w.bin", 1500)
    assert str(failure(root, key_pair.public)) == "file changed: w.bin (bytes 1000-2000)"
    os.truncate(root / "w.bin", 1500)
    assert (
        str(failure(root, key_pair.public)) == "file changed: w.bin (size 1500 bytes, signed 2500)"
    )
    os.truncate(root / "w.bin", 0)
    assert str(failure(root, key_pair.public)) == "file changed: w.bin (size 0 bytes, signed 2500)"


def test_special_files_are_refused(model, key_pair):
    sign(model, key_pair.private)
    os.mkfifo(model / "pipe")
    error = failure(model, key_pair.public)
    assert str(error) == "not a regular file or folder: pipe"
    with pytest.raises(InputError, match="not a regular file or folder: pipe"):
        sign(model, key_pair.private)


def test_broken_symlink_is_refused_even_when_allowed(model, key_pair):
    sign(model, key_pair.private)
    (model / "gone.bin").symlink_to(model / "never-existed")
    assert str(failure(model, key_pair.public, allow_symlinks=True)) == "broken symlink: gone.bin"


def test_symlinked_root_is_refused(model, key_pair, tmp_path):
    sign(model, key_pair.private, tmp_path / "m.sig")
    link = tmp_path / "link"
    link.symlink_to(model)
    assert str(failure(link, key_pair.public, tmp_path / "m.sig")) == (
        f"symlink refused: {link} (pass --allow-symlinks to follow symlinks)"
    )
    assert verify(link, key_pair.public, tmp_path / "m.sig", allow_symlinks=True).files == 5
