"""bench/ledger: append throughput, full verification and proofs of the Bastion ledger.

    .venv/bin/python bench/ledger/run.py [--entries 1000000] [--data DIR] [--out FILE]

Builds a ledger of --entries scan events once (batched appends, reused when already there)
and measures: single appends (one transaction each, synchronous=FULL) and batched appends
(append_many, 1,000 per transaction) into a fresh ledger; a full `verify` of the big one;
inclusion and consistency proofs: size in hashes and bytes, time to build, time to check with
the standalone verifier. There is no peer tool: no ML tool keeps a verifiable log to compare
with. Prints a table, writes JSON, exits 1 when a target is missed. See docs/ledger.md."""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bastion.govern import verify_proof  # noqa: E402
from bastion.govern.checkpoint import generate_key_pair, load_private_key  # noqa: E402
from bastion.govern.events import Event, Subject  # noqa: E402
from bastion.govern.ledger import Ledger  # noqa: E402

BATCH = 1000
SINGLE_APPENDS = 2000
BATCHED_APPENDS = 100_000
PROOFS = 200
TARGETS = {"batched appends/s": 20_000, "proof check ms": 1.0, "verify s": 30.0}


def event(i: int) -> Event:
    return Event(
        kind="scan",
        actor="bench",
        time="2024-05-01T12:00:00Z",
        subjects=(Subject(f"model-{i}.safetensors", f"sha256:{i:064x}"),),
        parents=(f"sha256:{'d' * 8}{i // 10:056x}",),
        details={"findings": {"high": i % 3, "low": i % 7}},
    )


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def append_rates(folder: Path, key: Ed25519PrivateKey) -> dict[str, float]:
    single = Ledger.create(folder / "single.db", key.public_key())
    events = [event(i) for i in range(SINGLE_APPENDS)]
    seconds = timed(lambda: [single.append(e) for e in events])
    batched = Ledger.create(folder / "batched.db", key.public_key())
    events = [event(i) for i in range(BATCHED_APPENDS)]
    batches = [events[i : i + BATCH] for i in range(0, len(events), BATCH)]
    batched_seconds = timed(lambda: [batched.append_many(b) for b in batches])
    return {
        "single appends/s": SINGLE_APPENDS / seconds,
        "batched appends/s": BATCHED_APPENDS / batched_seconds,
    }


def big_ledger(path: Path, entries: int) -> tuple[Ledger, Ed25519PrivateKey, float]:
    """The ledger of `entries` events, built (and timed) only when it is not there yet."""
    key_path = path.with_suffix(".key")
    if path.exists() and key_path.exists():
        ledger = Ledger.open(path)
        if ledger.size == entries:
            return ledger, load_private_key(key_path), 0.0
        ledger.close()
        path.unlink()
    for stale in (path, key_path, path.with_suffix(".pub")):
        stale.unlink(missing_ok=True)
    key = generate_key_pair(key_path, path.with_suffix(".pub"))
    ledger = Ledger.create(path, key.public_key())
    start = time.perf_counter()
    for first in range(0, entries, 10 * BATCH):
        ledger.append_many([event(i) for i in range(first, min(entries, first + 10 * BATCH))])
    ledger.checkpoint(key)
    return ledger, key, time.perf_counter() - start


def proof_figures(ledger: Ledger, rng: random.Random) -> dict[str, float]:
    size = ledger.size
    build, check, hashes = [], [], []
    for _ in range(PROOFS):
        index = rng.randrange(size)
        start = time.perf_counter()
        proof = ledger.inclusion_proof(index)
        build.append(time.perf_counter() - start)
        hashes.append(len(proof["audit_path"]))
        start = time.perf_counter()
        assert verify_proof.check(proof) == ""
        check.append(time.perf_counter() - start)
    old = rng.randrange(1, size)
    consistency = ledger.consistency_proof(old)
    start = time.perf_counter()
    assert verify_proof.check(consistency) == ""
    consistency_check = time.perf_counter() - start
    return {
        "inclusion proof hashes": max(hashes),
        "inclusion proof bytes": max(hashes) * 32,
        "proof build ms": 1000 * sorted(build)[len(build) // 2],
        "proof check ms": 1000 * sorted(check)[len(check) // 2],
        "consistency proof hashes": len(consistency["consistency_path"]),
        "consistency check ms": 1000 * consistency_check,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bastion-bench")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=args.data) as scratch:
        results.update(append_rates(Path(scratch), Ed25519PrivateKey.generate()))
    ledger, key, build_seconds = big_ledger(args.data / "ledger-bench.db", args.entries)
    if build_seconds:
        results["build s (batches of 10,000)"] = build_seconds
    results["verify s"] = timed(lambda: ledger.verify(key.public_key()))
    results.update(proof_figures(ledger, random.Random(7)))
    results["database MB"] = ledger.path.stat().st_size / 1e6
    ledger.close()
    missed = [
        name
        for name, target in TARGETS.items()
        if (results[name] < target if name.endswith("/s") else results[name] > target)
    ]
    print(f"Bastion ledger, {args.entries:,} entries ({platform.python_version()}); no peer tool")
    print(f"{'measure':<30} {'value':>12}  target")
    for name, value in results.items():
        target = TARGETS.get(name)
        shown = "" if target is None else (">= " if name.endswith("/s") else "< ") + f"{target:g}"
        print(f"{name:<30} {value:>12,.3f}  {shown}")
    document = {"entries": args.entries, "results": results, "missed": missed}
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
