"""Raw pickle streams (protocols 0-5), several pickles in one file, and joblib's format,
where raw numpy buffers sit between the opcodes right after each NumpyArrayWrapper."""

from __future__ import annotations

import io
from typing import Any, BinaryIO

from bastion.findings import Finding, Location
from bastion.supplychain.scan import pickle_fast
from bastion.supplychain.scan.context import ScanContext
from bastion.supplychain.scan.formats.base import FormatScanner
from bastion.supplychain.scan.pickle_machine import (
    Call,
    Container,
    GlobalRef,
    MalformedPickle,
    Opaque,
    PickleMachine,
    analyse_pickles,
    quiet_genops,
)
from bastion.supplychain.scan.rules import PKL_MALFORMED

_CALL_OPS = frozenset("REDUCE INST OBJ NEWOBJ NEWOBJ_EX BUILD".split())
_IMPORT_OPS = frozenset("GLOBAL STACK_GLOBAL INST EXT1 EXT2 EXT4".split())
_JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"


def looks_like_pickle(head: bytes, strict: bool = False) -> bool:
    """Whether the bytes start a pickle a loader would execute.

    A PROTO opcode with a supported version followed by valid opcodes is a pickle. Without
    PROTO (protocols 0 and 1), demand a STOP or an import and a call among the valid opcodes,
    so that ordinary text is not mistaken for a pickle. `strict` is for archive members,
    where random tensor bytes may start with 0x80.
    """
    if not head:
        return False
    has_proto = head[0] == 0x80 and len(head) > 1 and head[1] <= 5
    enough = 8 if strict else 2
    count, imports, calls = 0, False, False
    buffer = io.BytesIO(head)
    try:
        for name, _, _ in quiet_genops(buffer):
            count += 1
            if name == "STOP":
                return count > 1
            imports = imports or name in _IMPORT_OPS
            calls = calls or name in _CALL_OPS
            # Stop as soon as the answer is settled: a whole small pickle fits in the head,
            # and parsing all of it here as well as in the scan doubled the cost of small files.
            if (count >= enough) if has_proto else (imports and calls):
                return True
    except (ValueError, EOFError, UnicodeDecodeError, OverflowError):
        pass
    ran_out = buffer.tell() >= len(head)  # the head ended, not the pickle
    if has_proto:
        return count >= enough or (ran_out and count >= 2)
    return imports and calls


def _dtype_info(dtype: Any) -> tuple[int, bool] | None:
    """(itemsize, has objects) of a pickled numpy.dtype call, without importing anything
    from the file: numpy parses the type string itself. Structured dtypes ('V') take their
    size and fields from the BUILD state."""
    spec = _dtype_spec(dtype)
    if spec is None:
        return None
    import numpy as np  # only joblib files need it; keeps the CLI's start-up short

    try:
        parsed = np.dtype(spec)
    except (TypeError, ValueError):
        return None
    if parsed.kind != "V" or not isinstance(dtype.state, Container):
        return parsed.itemsize, parsed.hasobject
    state = dtype.state.items
    itemsize = state[5] if len(state) > 5 and isinstance(state[5], int) else parsed.itemsize
    fields = state[4] if len(state) > 4 else None
    has_objects = isinstance(fields, Container) and any(
        _dtype_has_objects(value) for value in fields.items[1::2]
    )
    return itemsize, has_objects


def _dtype_spec(dtype: Any) -> str | None:
    if isinstance(dtype, Call) and isinstance(dtype.args, Container) and dtype.args.items:
        spec = dtype.args.items[0]
        return spec if isinstance(spec, str) else None
    return None


def _dtype_has_objects(field: Any) -> bool:
    """A structured field is (dtype, offset[, title]); unknown shapes count as objects."""
    if not (isinstance(field, Container) and field.items):
        return True
    info = _dtype_info(field.items[0])
    return info is None or info[1]


class JoblibAwareMachine(PickleMachine):
    """After BUILD on a joblib NumpyArrayWrapper the loader reads the array from the stream
    itself; follow it so the opcodes after the buffer are analysed too."""

    def _build(self, target: Any, state: Any, pos: int) -> None:
        super()._build(target, state, pos)
        if not (isinstance(target, Call) and _class_of(target) == _JOBLIB_WRAPPER):
            return
        fields = _dict_items(state)
        shape, dtype = fields.get("shape"), fields.get("dtype")
        info = _dtype_info(dtype)
        if not isinstance(shape, Container) or info is None:
            raise MalformedPickle("joblib array wrapper without a readable shape or dtype", pos)
        itemsize, has_objects = info
        count = 1
        for dim in shape.items:
            if not isinstance(dim, int) or dim < 0:
                raise MalformedPickle("joblib array wrapper with an invalid shape", pos)
            count *= dim
        self.stack[-1] = Opaque("joblib array")
        if has_objects:
            self._nested_array_pickle()
            return
        if fields.get("numpy_array_alignment_bytes") is not None:
            padding = self.stream.read(1)
            if len(padding) != 1:
                raise MalformedPickle("joblib array padding missing", pos)
            self._skip(padding[0], pos)
        self._skip(count * itemsize, pos)

    def _skip(self, nbytes: int, pos: int) -> None:
        here = self.stream.tell()
        end = self.stream.seek(0, io.SEEK_END)
        if here + nbytes > end:
            raise MalformedPickle("joblib array data runs past the end of the file", pos)
        self.stream.seek(here + nbytes)

    def _nested_array_pickle(self) -> None:
        """Object arrays are a whole pickle inline in the stream (loaded with a fresh memo)."""
        for machine, _ in analyse_pickles(
            self.stream, self.loc, self.ctx, machine=JoblibAwareMachine, max_pickles=1
        ):
            self.findings.extend(machine.verdicts())
            self.opcodes += machine.opcodes


def _class_of(call: Call) -> str | None:
    func = call.func
    if isinstance(func, GlobalRef) and func.qualified in ("copyreg._reconstructor",
                                                          "copyreg.__newobj__"):
        first = call.args.items[0] if isinstance(call.args, Container) and call.args.items else None
        func = first
    return func.qualified if isinstance(func, GlobalRef) else None


def _dict_items(state: Any) -> dict[str, Any]:
    if not (isinstance(state, Container) and state.kind == "dict"):
        return {}
    items = state.items
    return {k: v for k, v in zip(items[::2], items[1::2], strict=False) if isinstance(k, str)}


# torch.save's legacy format: this magic number, protocol version, system info, the
# object, and the storage keys are pickles; raw storage bytes follow and are never unpickled.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PICKLES = 5


def _read(
    stream: BinaryIO,
    loc: Location,
    ctx: ScanContext,
    machine: type[PickleMachine],
    max_pickles: int | None,
) -> tuple[list[Finding], set[str]]:
    """Findings of one reading of the stream, and the globals it imported."""
    stream.seek(0)
    findings: list[Finding] = []
    imported: set[str] = set()
    pickles = analyse_pickles(stream, loc, ctx, machine=machine, max_pickles=max_pickles)
    for index, (sm, value) in enumerate(pickles, start=1):
        findings.extend(sm.verdicts())
        imported.update(ref.qualified for ref in sm.globals)
        if value == TORCH_LEGACY_MAGIC and index == 1:
            ctx.formats.append("torch-legacy")
            max_pickles = TORCH_LEGACY_PICKLES
        if max_pickles is not None and index >= max_pickles:
            break
    return findings, imported


def scan_pickle_stream(
    stream: BinaryIO,
    loc: Location,
    ctx: ScanContext,
    max_pickles: int | None = None,
    joblib: bool = True,
) -> list[Finding]:
    """Read the stream as `pickle.load` does and, when it holds joblib array wrappers, as
    `joblib.load` does too (which skips raw array bytes that `pickle.load` would execute as
    opcodes). Both loaders accept the file, so findings of both readings count; only the
    plain reading's break inside array bytes is expected and dropped.

    A small pickle that the fast path proves clean skips both readings (see pickle_fast)."""
    if max_pickles is None and _fast_path_clean(stream, ctx):
        return []
    findings, imported = _read(stream, loc, ctx, PickleMachine, max_pickles)
    if not (joblib and _JOBLIB_WRAPPER in imported):
        return findings
    ctx.formats.append("joblib")
    joblib_findings, _ = _read(stream, loc, ctx, JoblibAwareMachine, max_pickles)
    plain = [f for f in findings if f.rule_id != PKL_MALFORMED.rule_id]
    return list({(f.rule_id, f.title, f.location): f for f in joblib_findings + plain}.values())


def _fast_path_clean(stream: BinaryIO, ctx: ScanContext) -> bool:
    """Whether a small in-memory pickle is one the symbolic machine would find nothing in."""
    if type(stream) is not io.BytesIO:
        return False
    size = stream.seek(0, io.SEEK_END)
    stream.seek(0)
    return size <= pickle_fast.MAX_BYTES and pickle_fast.is_clean(stream.getvalue(), ctx.limits)


SCANNER = FormatScanner(
    name="pickle",
    sniff=lambda head, stream: looks_like_pickle(head),
    scan=scan_pickle_stream,
)
