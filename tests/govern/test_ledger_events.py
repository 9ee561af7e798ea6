"""Event validation and canonical JSON; checkpoint notes, signatures and keys."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import InputError
from bastion.govern import checkpoint
from bastion.govern.checkpoint import Checkpoint, CheckpointError
from bastion.govern.events import Event, EventError, canonical_json

DIGEST = "sha256:" + "0f" * 32


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": [1, "é"], "a": {"y": 1, "x": None}}) == (
        '{"a":{"x":null,"y":1},"b":[1,"é"]}'.encode()
    )
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_event_round_trip_and_time_normalisation() -> None:
    event = Event.from_json(
        {
            "kind": "train",
            "actor": "ana",
            "time": "2024-05-01T12:00:00+00:00",
            "subjects": [{"name": "model.pt", "digest": DIGEST}],
            "parents": [DIGEST],
            "details": {"epochs": 3},
        }
    )
    assert event.time == "2024-05-01T12:00:00Z"
    assert Event.from_json(event.to_json()) == event
    assert Event.from_json({"kind": "scan", "actor": "x"}).time.endswith("Z")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"kind": "train"}, "missing 'actor'"),
        ({"kind": "party", "actor": "a"}, "not one of"),
        ({"kind": "scan", "actor": " "}, "actor must be a non-empty string"),
        ({"kind": "scan", "actor": "a", "extra": 1}, "unknown field"),
        ({"kind": "scan", "actor": "a", "time": "2024-05-01T12:00:00"}, "must be UTC"),
        ({"kind": "scan", "actor": "a", "time": "2024-05-01T12:00:00+02:00"}, "must be UTC"),
        ({"kind": "scan", "actor": "a", "time": "soon"}, "not ISO-8601"),
        ({"kind": "scan", "actor": "a", "subjects": {}}, "subjects must be a list"),
        ({"kind": "scan", "actor": "a", "subjects": [{"name": "m"}]}, "subjects[0]"),
        (
            {"kind": "scan", "actor": "a", "subjects": [{"name": "m", "digest": "sha256:AB"}]},
            "subjects[0].digest",
        ),
        ({"kind": "scan", "actor": "a", "parents": ["sha1:00"]}, "parents[0]"),
        ({"kind": "scan", "actor": "a", "details": [1]}, "details must be a JSON object"),
        ({"kind": "scan", "actor": "a", "details": {"x": float("inf")}}, "not plain JSON"),
        ([], "is a JSON object"),
    ],
)
def test_invalid_events_are_refused_clearly(document, message: str) -> None:
    with pytest.raises(EventError) as caught:
        Event.from_json(document)
    assert message in caught.value.message


def test_checkpoint_note_layout_and_signature() -> None:
    key = Ed25519PrivateKey.generate()
    state = Checkpoint("acme.example/ml", 7, bytes(range(32)), "2024-05-01T12:00:00Z")
    note = state.sign(key)
    lines = note.split("\n")
    assert lines[:5] == [
        "acme.example/ml",
        "7",
        base64.b64encode(bytes(range(32))).decode(),
        "timestamp 2024-05-01T12:00:00Z",
        "",
    ]
    assert lines[5].startswith("\u2014 acme.example/ml ")
    assert checkpoint.verify(note, key.public_key()) == state
    blob = base64.b64decode(lines[5].split(" ")[2])
    assert blob[:4] == checkpoint.key_id("acme.example/ml", key.public_key())


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda n: n.replace("\n7\n", "\n8\n"), "does not verify"),
        (lambda n: n.replace("timestamp 2024", "timestamp 2025"), "does not verify"),
        (lambda n: n.replace("\u2014 acme.example/ml", "\u2014 evil.example"), "signed by"),
        (lambda n: n.split("\n\n")[0] + "\n", "not a checkpoint note"),
        (lambda n: n.replace("\n7\n", "\nseven\n"), "not a number"),
        (lambda n: n + "\u2014 other AAAA\n", "exactly one signature"),
    ],
)
def test_altered_checkpoints_are_refused(edit, message: str) -> None:
    key = Ed25519PrivateKey.generate()
    note = Checkpoint("acme.example/ml", 7, bytes(32), "2024-05-01T12:00:00Z").sign(key)
    with pytest.raises(CheckpointError, match=message):
        checkpoint.verify(edit(note), key.public_key())


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    note = Checkpoint("o", 1, bytes(32), "t").sign(Ed25519PrivateKey.generate())
    with pytest.raises(CheckpointError, match="different key"):
        checkpoint.verify(note, Ed25519PrivateKey.generate().public_key())


def test_key_files(tmp_path: Path) -> None:
    private = checkpoint.generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    loaded = checkpoint.load_public_key(tmp_path / "k.pub")
    assert checkpoint.raw_public(loaded) == checkpoint.raw_public(private.public_key())
    assert checkpoint.raw_public(checkpoint.load_public_key(tmp_path / "k.key")) == (
        checkpoint.raw_public(loaded)
    )
    with pytest.raises(InputError, match="already exists"):
        checkpoint.generate_key_pair(tmp_path / "k.key", tmp_path / "other.pub")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(InputError, match="not a PEM"):
        checkpoint.load_public_key(tmp_path / "junk.pem")
    with pytest.raises(InputError, match="no such"):
        checkpoint.load_private_key(tmp_path / "absent.key")
