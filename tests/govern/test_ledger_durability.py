"""Crash safety (SIGKILL mid-append) and concurrent writers from several processes.

These tests make thousands of fsyncs from child processes; they run on their own after the
parallel suite (marker `serial`, see the Makefile), where other tests' disk traffic cannot
stall them, and a writer that stops making progress fails the test instead of hanging it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.govern.ledger import Ledger

pytestmark = pytest.mark.serial

TOTAL = 1000
# A writer that has not finished within this many seconds is killed, and the whole test
# fails past DEADLINE_S: a stall is reported, never waited on forever.
WRITER_TIMEOUT_S = 60
DEADLINE_S = 300

WRITER = textwrap.dedent(
    """
    import sys
    from bastion.govern.checkpoint import load_private_key
    from bastion.govern.events import Event, Subject
    from bastion.govern.ledger import Ledger

    path, key_path, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
    key = load_private_key(key_path)
    with Ledger.open(path) as ledger:
        while (index := ledger.size) < total:
            digest = "sha256:%064x" % index
            event = Event("scan", "writer", subjects=(Subject(f"f{index}", digest),))
            appended = ledger.append(event)
            print(appended, flush=True)
            if appended % 50 == 0:
                ledger.checkpoint(key)
    """
)


def test_sigkill_during_appends_loses_nothing_acknowledged(tmp_path: Path) -> None:
    from bastion.govern.checkpoint import generate_key_pair

    path = tmp_path / "ledger.db"
    private = generate_key_pair(tmp_path / "k.key", tmp_path / "k.pub")
    Ledger.create(path, private.public_key()).close()
    rng = random.Random(1234)
    acknowledged: set[int] = set()
    kills = 0
    started = time.monotonic()
    # Until a writer finishes on its own: a writer killed after its commit but before it
    # printed leaves an append that is stored yet never acknowledged, so counting the
    # acknowledged ones could wait for an index that is never printed.
    finished = False
    while not finished:
        if time.monotonic() - started > DEADLINE_S:
            pytest.fail(f"writers stalled: {len(acknowledged)} of {TOTAL} appends acknowledged")
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(tmp_path / "k.key"), str(TOTAL)],
            stdout=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(WRITER_TIMEOUT_S, child.kill)
        watchdog.start()
        assert child.stdout is not None
        budget = rng.randint(20, 300) if kills < 8 else TOTAL
        for _ in range(budget):
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.add(int(line))
        if kills < 8 and child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            kills += 1
        acknowledged.update(int(line) for line in child.stdout.read().split())
        finished = child.wait() == 0
        watchdog.cancel()
    assert kills >= 8
    with Ledger.open(path) as ledger:
        ledger.checkpoint(private)
        result = ledger.verify(private.public_key())
        assert result.size == TOTAL
        assert acknowledged <= set(range(result.size))
        subjects = [e.event["subjects"][0]["digest"] for e in ledger.entries()]
        assert subjects == [f"sha256:{i:064x}" for i in range(TOTAL)]


APPENDER = textwrap.dedent(
    """
    import os, sys, time
    from bastion.govern.events import Event, Subject
    from bastion.govern.ledger import Ledger

    path, writer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    while not os.path.exists(path + ".go"):  # start together, so the appends interleave
        time.sleep(0.001)
    with Ledger.open(path) as ledger:
        for i in range(count):
            digest = "sha256:%064x" % (writer * 100_000 + i)
            subject = Subject(f"w{writer}-{i}", digest)
            print(ledger.append(Event("sign", f"writer-{writer}", subjects=(subject,))))
    """
)


def test_concurrent_writers_never_corrupt_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    key = Ed25519PrivateKey.generate()
    Ledger.create(path, key.public_key()).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path), str(w), "200"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    Path(f"{path}.go").touch()
    outputs = [writer.communicate(timeout=120)[0] for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)
    indices = sorted(int(i) for output in outputs for i in output.split())
    assert indices == list(range(800))
    with Ledger.open(path) as ledger:
        ledger.checkpoint(key)
        assert ledger.verify(key.public_key()).size == 800
        by_writer: dict[str, list[str]] = {}
        for entry in ledger.entries():
            event = entry.event
            by_writer.setdefault(event["actor"], []).append(event["subjects"][0]["name"])
    for writer in range(4):
        assert by_writer[f"writer-{writer}"] == [f"w{writer}-{i}" for i in range(200)]
