"""The ledger API: roots and proofs against independently computed hashes, lineage, and
verification naming the first bad index for every kind of tampering."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.errors import InputError
from bastion.govern import verify_proof
from bastion.govern.checkpoint import load_public_key, parse
from bastion.govern.events import Event, Subject
from bastion.govern.ledger import Ledger, LedgerTampered, init_ledger, key_paths
from bastion.govern.merkle import leaf_hash

Build = Callable[..., Ledger]


def tamper(path: Path, *statements: str, params: tuple = ()) -> None:
    """Edit the database the way an attacker with file access would: triggers dropped."""
    db = sqlite3.connect(path)
    db.execute("DROP TRIGGER IF EXISTS entries_append_only_update")
    db.execute("DROP TRIGGER IF EXISTS entries_append_only_delete")
    for statement in statements:
        db.execute(statement, params if "?" in statement else ())
    db.commit()
    db.close()


def failure(ledger: Ledger, key: Ed25519PrivateKey) -> LedgerTampered:
    with pytest.raises(LedgerTampered) as caught:
        ledger.verify(key.public_key())
    return caught.value


def bodies(ledger: Ledger) -> list[bytes]:
    return [e.body.encode() for e in ledger.entries()]


def test_roots_at_every_size_match_the_naive_tree(new_ledger: Build, naive: SimpleNamespace):
    ledger = new_ledger(37)
    raw = bodies(ledger)
    for size in range(38):
        assert ledger.root(size) == naive.mth(raw[:size])


def test_entries_are_canonical_json(h: SimpleNamespace, new_ledger: Build) -> None:
    entry = new_ledger(1).entry(0)
    assert entry.body == json.dumps(entry.event, sort_keys=True, separators=(",", ":"))
    assert entry.event["subjects"] == [{"digest": h.digest_of("file-0"), "name": "file-0"}]


def test_single_and_batched_appends_build_the_same_tree(
    h: SimpleNamespace, tmp_path: Path, key
) -> None:
    one = Ledger.create(tmp_path / "one.db", key.public_key())
    many = Ledger.create(tmp_path / "many.db", key.public_key())
    for i in range(21):
        assert one.append(h.make_event(i)) == i
    assert many.append_many([h.make_event(i) for i in range(10)]) == list(range(10))
    assert many.append_many([h.make_event(i) for i in range(10, 21)]) == list(range(10, 21))
    assert one.root() == many.root()


def test_proofs_verify_with_the_standalone_verifier(
    h: SimpleNamespace, new_ledger: Build, naive
) -> None:
    ledger = new_ledger(45)
    raw = bodies(ledger)
    for size in (1, 17, 32, 45):
        for index in range(0, size, 4):
            proof = json.loads(json.dumps(ledger.inclusion_proof(index, size)))
            assert proof["audit_path"] == [h.hex() for h in naive.path(index, raw[:size])]
            assert proof["root_hash"] == naive.mth(raw[:size]).hex()
            assert verify_proof.check(proof) == ""
    for old in (0, 1, 7, 16, 30, 45):
        proof = ledger.consistency_proof(old, 45)
        assert proof["consistency_path"] == [h.hex() for h in naive.proof(old, raw)]
        assert verify_proof.check(proof) == ""


def test_proofs_at_a_checkpointed_size_carry_the_signed_note(new_ledger: Build) -> None:
    ledger = new_ledger(9)
    proof = ledger.inclusion_proof(3)
    assert proof["checkpoint"].startswith("test.example/log\n9\n")
    assert "checkpoint" not in ledger.inclusion_proof(3, 5)


def test_proofs_outside_the_tree_are_input_errors(new_ledger: Build) -> None:
    ledger = new_ledger(4)
    with pytest.raises(InputError):
        ledger.inclusion_proof(4)
    with pytest.raises(InputError):
        ledger.inclusion_proof(0, 5)
    with pytest.raises(InputError):
        ledger.consistency_proof(3, 2)


def test_lineage_walks_from_dataset_to_deployment(h: SimpleNamespace, tmp_path: Path, key) -> None:
    ledger = Ledger.create(tmp_path / "l.db", key.public_key())
    data, model, other, service = (h.digest_of(x) for x in ("data", "model", "other", "svc"))
    events = [
        Event("data-diff", "ana", subjects=(Subject("data.csv", data),)),
        Event("scan", "bo", subjects=(Subject("other.pkl", other),)),
        Event("train", "ana", subjects=(Subject("model.pt", model),), parents=(data,)),
        Event("assess", "cy", subjects=(Subject("model.pt", model),)),
        Event("deploy", "cy", subjects=(Subject("svc", service),), parents=(model,)),
        Event("verify", "cy", subjects=(Subject("svc", service),)),
    ]
    ledger.append_many(events)
    assert [e.index for e in ledger.lineage(model)] == [0, 2, 3, 4, 5]
    assert [e.index for e in ledger.lineage(data)] == [0, 2, 3, 4, 5]
    assert [e.index for e in ledger.lineage(service)] == [0, 2, 3, 4, 5]
    assert [e.index for e in ledger.lineage(other)] == [1]
    assert ledger.lineage(h.digest_of("unknown")) == []
    assert [e.index for e in ledger.find("deploy")] == [4]
    assert [e.index for e in ledger.find(limit=2)] == [4, 5]


def test_a_clean_ledger_verifies(h: SimpleNamespace, new_ledger: Build, key) -> None:
    ledger = new_ledger(50)
    ledger.append(h.make_event(50))
    result = ledger.verify(key.public_key())
    assert (result.size, result.checkpoint.size, result.unsigned, result.checkpoints) == (
        51,
        50,
        1,
        1,
    )


def test_changed_entry_body_is_named(new_ledger: Build, key) -> None:
    ledger = new_ledger(40)
    tamper(
        ledger.path, "UPDATE entries SET body = replace(body, 'tester', 'mallory') WHERE idx = 23"
    )
    assert failure(ledger, key).index == 23


@pytest.mark.parametrize("index", [0, 22, 23, 39])
def test_changed_body_and_leaf_hash_are_located_through_signed_roots(
    h: SimpleNamespace, new_ledger: Build, key, index: int
) -> None:
    ledger = new_ledger(40)
    forged = h.make_event(999).canonical()
    tamper(
        ledger.path,
        f"UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = {index}",
        params=(forged.decode(), leaf_hash(forged)),
    )
    error = failure(ledger, key)
    assert error.index == index
    assert f"entry {index} " in error.message


def test_fully_rewritten_hashes_are_bracketed_by_checkpoints(
    h: SimpleNamespace, tmp_path: Path, key
) -> None:
    """An attacker who recomputes every stored hash still cannot match the signed roots;
    checkpoints taken along the way bound where the change is."""
    ledger = Ledger.create(tmp_path / "l.db", key.public_key())
    for i in range(30):
        ledger.append(h.make_event(i))
        ledger.checkpoint(key)
    rebuilt = Ledger.create(tmp_path / "forged.db", key.public_key())
    rebuilt.append_many([h.make_event(999 if i == 17 else i) for i in range(30)])
    tamper(
        ledger.path,
        "ATTACH DATABASE ? AS forged",
        "DELETE FROM entries",
        "DELETE FROM nodes",
        "DELETE FROM refs",
        "INSERT INTO entries SELECT * FROM forged.entries",
        "INSERT INTO nodes SELECT * FROM forged.nodes",
        "INSERT INTO refs SELECT * FROM forged.refs",
        params=(str(tmp_path / "forged.db"),),
    )
    assert failure(ledger, key).index == 17


def test_deleted_entry_is_named(new_ledger: Build, key) -> None:
    ledger = new_ledger(20)
    tamper(ledger.path, "DELETE FROM entries WHERE idx = 11")
    error = failure(ledger, key)
    assert error.index == 11


def test_truncation_below_the_checkpoint_is_named(new_ledger: Build, key) -> None:
    ledger = new_ledger(20)
    tamper(
        ledger.path,
        "DELETE FROM entries WHERE idx >= 15",
        "DELETE FROM nodes WHERE (idx + 1) << level > 15",
        "DELETE FROM refs WHERE idx >= 15",
    )
    error = failure(ledger, key)
    assert error.index == 15
    assert "truncated" in error.message


@pytest.mark.parametrize(("first", "second"), [(4, 9), (5, 12), (6, 7)])
def test_reordered_entries_are_named(new_ledger: Build, key, first: int, second: int) -> None:
    ledger = new_ledger(16)
    tamper(
        ledger.path,
        "UPDATE entries SET idx = -1 WHERE idx = ?",
        params=(first,),
    )
    tamper(ledger.path, f"UPDATE entries SET idx = {first} WHERE idx = {second}")
    tamper(ledger.path, f"UPDATE entries SET idx = {second} WHERE idx = -1")
    # Swap the lineage references too, so only the tree can tell.
    tamper(
        ledger.path,
        f"UPDATE refs SET idx = CASE idx WHEN {first} THEN {second} ELSE {first} END "
        f"WHERE idx IN ({first}, {second})",
    )
    assert failure(ledger, key).index == first


def test_forged_checkpoint_signature_fails(new_ledger: Build, key) -> None:
    ledger = new_ledger(5)
    note = ledger.latest_checkpoint()
    forged = Ed25519PrivateKey.generate()
    state, _, _ = parse(note)
    tamper(
        ledger.path,
        "UPDATE checkpoints SET note = ? WHERE tree_size = 5",
        params=(state.sign(forged),),
    )
    assert "forged" in failure(ledger, key).message


def test_checkpoint_with_a_changed_size_fails(new_ledger: Build, key) -> None:
    ledger = new_ledger(5)
    note = ledger.latest_checkpoint().replace("\n5\n", "\n4\n", 1)
    tamper(ledger.path, "UPDATE checkpoints SET note = ?", params=(note,))
    assert "signature does not verify" in failure(ledger, key).message


def test_deleted_checkpoints_fail(new_ledger: Build, key) -> None:
    ledger = new_ledger(5)
    tamper(ledger.path, "DELETE FROM checkpoints")
    assert "no signed checkpoint" in failure(ledger, key).message


def test_a_trusted_checkpoint_kept_elsewhere_catches_rollback(new_ledger: Build, key) -> None:
    ledger = new_ledger(8)
    kept = ledger.latest_checkpoint()
    tamper(ledger.path, "DELETE FROM entries WHERE idx >= 6", "DELETE FROM checkpoints")
    ledger.checkpoint(key)
    with pytest.raises(LedgerTampered) as caught:
        ledger.verify(key.public_key(), [kept])
    assert caught.value.index == 6


def test_changed_lineage_reference_is_named(new_ledger: Build, key) -> None:
    ledger = new_ledger(10)
    tamper(ledger.path, "DELETE FROM refs WHERE idx = 4")
    assert failure(ledger, key).index == 4


def test_damaged_stored_tree_hash_is_reported(new_ledger: Build, key) -> None:
    ledger = new_ledger(16)
    tamper(ledger.path, "UPDATE nodes SET hash = zeroblob(32) WHERE level = 2 AND idx = 1")
    error = failure(ledger, key)
    assert error.index == 4
    assert "stored tree hash" in error.message


def test_wrong_key_is_an_input_error(new_ledger: Build) -> None:
    ledger = new_ledger(3)
    with pytest.raises(InputError, match="not the checkpoint key"):
        ledger.verify(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(InputError, match="not the checkpoint key"):
        ledger.checkpoint(Ed25519PrivateKey.generate())


def test_missing_and_corrupt_files_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no ledger"):
        Ledger.open(tmp_path / "absent.db")
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(InputError, match="not a Bastion ledger"):
        Ledger.open(tmp_path / "junk.db")
    sqlite3.connect(tmp_path / "other.db").execute(
        "CREATE TABLE meta (key, value)"
    ).connection.commit()
    with pytest.raises(InputError, match="not a Bastion ledger"):
        Ledger.open(tmp_path / "other.db")


def test_entries_cannot_be_updated_through_sqlite_by_accident(new_ledger: Build) -> None:
    ledger = new_ledger(2)
    db = sqlite3.connect(ledger.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE entries SET body = '{}' WHERE idx = 0")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM entries")


def test_init_generates_keys_and_signs_an_empty_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "ledger.db"
    ledger, private, public = init_ledger(path, origin="acme.example/ml")
    assert (private, public) == key_paths(path)
    assert private.stat().st_mode & 0o777 == 0o600
    note = ledger.latest_checkpoint()
    assert note.startswith("acme.example/ml\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
    assert ledger.verify(load_public_key(public)).size == 0
    with pytest.raises(InputError, match="already exists"):
        init_ledger(path)


def test_export_writes_entries_and_the_checkpoint(new_ledger: Build, tmp_path: Path) -> None:
    ledger = new_ledger(3)
    out = ledger.export(tmp_path / "out" / "ledger.jsonl")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["ledger"] == "test.example/log"
    assert [line["index"] for line in lines[1:4]] == [0, 1, 2]
    assert lines[1]["entry"] == ledger.entry(0).body
    assert lines[-1]["checkpoint"] == ledger.latest_checkpoint()
