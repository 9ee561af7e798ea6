"""HDF5 files, the container of legacy Keras 2 `.h5` models (and of Keras 3 weights).

A Keras 2 model keeps its architecture as JSON in the root attributes `model_config` and
`training_config`; those are checked like a Keras 3 `config.json` (Lambda bytecode, module
references, custom objects). Only the root attributes are read, read-only, with h5py;
datasets (the weights) never are, and Keras is never called.

The HDF5 library is C code that crashes on some corrupt files (fuzzing found segmentation
faults while reading attributes), so it never runs in the scanner's own process: a child
process parses the file and asks this process for the bytes it needs, one read at a time.
A crash, a hang or a parse error in the child is a finding; the scanner carries on.
"""

from __future__ import annotations

import base64
import contextlib
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, BinaryIO

from bastion.findings import Finding, Location
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import ScanContext, stream_size
from bastion.supplychain.scan.formats import keras_config
from bastion.supplychain.scan.formats.base import FormatScanner
from bastion.supplychain.scan.streams import RangeReader

MAGIC = b"\x89HDF\r\n\x1a\n"
# The superblock sits at 0 or, after a user block, at 512 bytes times a power of two.
_FIRST_USER_BLOCK = 512
KERAS_ATTRIBUTES = ("model_config", "training_config")
PARSE_SECONDS = 30.0  # a parser still running by then is stuck on a hostile file
CAN_FORK = hasattr(os, "fork")
_MESSAGE_SLACK = 1 << 20  # a reply holds attributes (base64, under twice the file) and JSON


def _superblock_at(head: bytes, stream: BinaryIO) -> int | None:
    if head.startswith(MAGIC):
        return 0
    size = stream_size(stream)
    offset = _FIRST_USER_BLOCK
    while offset + len(MAGIC) <= size:
        if offset + len(MAGIC) <= len(head):
            candidate = head[offset : offset + len(MAGIC)]
        else:
            stream.seek(offset)
            candidate = stream.read(len(MAGIC))
        if candidate == MAGIC:
            return offset
        offset *= 2
    return None


class _RemoteFile(RangeReader):
    """In the child: a read-only file whose bytes the parent sends on request, so the child
    never shares the parent's file offsets."""

    def __init__(self, conn: Connection, size: int) -> None:
        super().__init__(size)
        self._conn = conn

    def read_at(self, offset: int, n: int) -> bytes:
        self._conn.send_bytes(json.dumps({"op": "read", "at": offset, "n": n}).encode())
        return self._conn.recv_bytes()


def _as_bytes(value: Any) -> bytes | None:
    """Keras writes the JSON as a fixed-length byte string; h5py may also give str or a
    one-element array."""
    import numpy as np

    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, str):
        return value.encode("utf-8", "replace")
    return bytes(value) if isinstance(value, bytes) else None


def _read_attributes(file: BinaryIO) -> dict[str, bytes | None]:
    import h5py

    with h5py.File(file, "r") as h5:
        return {name: _as_bytes(h5.attrs[name]) for name in KERAS_ATTRIBUTES if name in h5.attrs}


def _child(conn: Connection, size: int) -> None:
    try:
        values = _read_attributes(_RemoteFile(conn, size))
        encoded = {name: None if value is None else base64.b64encode(value).decode("ascii")
                   for name, value in values.items()}
        reply: dict[str, Any] = {"op": "done", "attributes": encoded}
    except Exception as exc:
        # h5py reports corrupt structures as assorted exception types (OSError,
        # OverflowError, KeyError, ...); each means the file cannot be read.
        reply = {"op": "error", "reason": f"{type(exc).__name__}: {exc}"[:300]}
    conn.send_bytes(json.dumps(reply).encode())


def _read_request(stream: BinaryIO, message: dict[str, Any], size: int) -> bytes | None:
    at, n = message.get("at"), message.get("n")
    if not (isinstance(at, int) and isinstance(n, int) and at >= 0 and 0 < n <= size - at):
        return None
    stream.seek(at)
    return stream.read(n)


def _attributes(message: dict[str, Any]) -> dict[str, bytes | None] | None:
    values = message.get("attributes")
    if not isinstance(values, dict):
        return None
    try:
        return {
            name: base64.b64decode(values[name], validate=True)
            if isinstance(values[name], str) else None
            for name in KERAS_ATTRIBUTES
            if name in values
        }
    except ValueError:
        return None


def _serve(conn: Connection, stream: BinaryIO, size: int, deadline: float) -> tuple[str, Any]:
    """Answer the child's reads until it replies, crashes or runs out of time. The child
    parsed a hostile file, so its messages are JSON, checked, and never unpickled."""
    crashed = "crash", "the HDF5 parser crashed on this file"
    while True:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            return "error", f"the HDF5 parser did not finish within {PARSE_SECONDS:.0f} seconds"
        try:
            message = json.loads(conn.recv_bytes(2 * size + _MESSAGE_SLACK))
        except (EOFError, OSError, ValueError):
            return crashed
        op = message.get("op") if isinstance(message, dict) else None
        if op == "read":
            data = _read_request(stream, message, size)
            if data is None:
                return crashed
            try:
                conn.send_bytes(data)
            except OSError:
                return crashed
        elif op == "done":
            attributes = _attributes(message)
            return crashed if attributes is None else ("done", attributes)
        elif op == "error":
            return "error", str(message.get("reason"))[:300]
        else:
            return crashed


def _fork(child_conn: Connection, conn: Connection, size: int) -> Callable[[], None]:
    """Fork the parser: fast, nothing to import. (multiprocessing.Process is avoided because
    it refuses to start children from daemonic workers such as a multiprocessing.Pool's.)"""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            conn.close()
            _child(child_conn, size)
            status = 0
        finally:
            os._exit(status)  # never run the parent's exit handlers or flush its buffers

    def stop() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    return stop


def _spawn(child_conn: Connection, size: int) -> Callable[[], None]:
    """Where fork does not exist, start a fresh interpreter for the parser."""
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(child_conn, size), daemon=True
    )
    process.start()

    def stop() -> None:
        process.kill()
        process.join()

    return stop


def read_keras_attributes(stream: BinaryIO) -> tuple[str, Any]:
    """("done", {attribute: bytes or None}) or ("error" | "crash", reason), the file being
    parsed in a child process."""
    import h5py  # noqa: F401 - loaded once in the parent, so forked children inherit it
    import numpy  # noqa: F401

    size = stream_size(stream)
    conn, child_conn = multiprocessing.Pipe()
    stop = _fork(child_conn, conn, size) if CAN_FORK else _spawn(child_conn, size)
    child_conn.close()
    try:
        return _serve(conn, stream, size, time.monotonic() + PARSE_SECONDS)
    finally:
        stop()
        conn.close()


def _attribute_findings(name: str, text: bytes | None, loc: Location) -> list[Finding]:
    if text is None:
        return [rules.unreadable_finding(f"HDF5 attribute {name} is not a JSON string", loc)]
    config, findings = keras_config.parse_config(text, f"HDF5 attribute {name}", loc)
    return findings or keras_config.scan_config(config, loc)


def scan_hdf5(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    status, result = read_keras_attributes(stream)
    if status != "done":
        return [rules.unreadable_finding(f"HDF5: {result}"[:300], loc)]
    if result:
        ctx.formats.append("keras-h5")
    return [
        finding
        for name, text in result.items()
        for finding in _attribute_findings(name, text, loc.inside(f"@{name}"))
    ]


SCANNER = FormatScanner(
    name="hdf5",
    sniff=lambda head, stream: _superblock_at(head, stream) is not None,
    scan=scan_hdf5,
)
