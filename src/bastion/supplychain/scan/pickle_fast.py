"""A fast path for small pickles that are plainly data: one question, answered with CPython's
C unpickler, "would the symbolic machine find nothing here?". Only a yes is ever acted on;
anything else sends the stream to the symbolic machine (pickle_machine), which produces the
findings. The fast path never decides that a file is dangerous, only that it is clean.

Nothing named in the file is imported or called. The C unpickler parses; every global it
asks for (`find_class`) and every persistent id (`persistent_load`) is answered with an
inert recorder object of this module's own making, so what it "builds" is a tree of plain
containers and recorders. Any global that the default-deny policy does not call a safe data
reconstructor, any nested loader or bytecode loader, any change to a global (BUILD, APPEND,
SETITEM or ADDITEMS on it), any error at all, ends the fast path.

Why a clean answer here means a clean answer from the symbolic machine
------------------------------------------------------------------------
The two must read the same opcodes with the same arguments, and everything the machine
reports on must be bounded. The conditions:

1. The same opcodes. Fixed-size and length-prefixed arguments are read the same way by every
   parser. Text-line arguments end at the first newline for every parser too, so the opcode
   sequence is the same; what differs between loaders is which lines they accept and what
   value they give them (NUL bytes, hex and octal numbers, escapes, encodings: the fixtures
   float_nul_terminated, int_hex_before_payload and put_key_nul_terminated live there). The
   symbolic machine reads them as the C unpickler does (pickle_machine._LOADER_READERS), and
   for each of them a line the C unpickler accepts is one the machine accepts, with the same
   value where the value matters: memo keys (GET, PUT: both parse base 10 up to a NUL),
   strings (STRING: the same unescaping, ASCII here, latin-1 there; UNICODE: the same
   raw-unicode-escape decoder), numbers (INT, LONG, FLOAT: what C's strtol, PyLong_FromString
   and PyOS_string_to_double accept, int(text, 0), int(text, 8) and float() accept too; a
   number's value never makes a finding). Global names (GLOBAL, INST, STACK_GLOBAL, EXT) must
   be exact dotted ASCII identifiers, which every decoder reads alike. PERSID's text id is
   refused (pickletools unescapes it, so it may fail there and not in C).
   Where the C unpickler is stricter (it refuses a protocol above 5, NEWOBJ of something that
   is not a class, a non-tuple REDUCE argument, a PUT right after MARK, ...) the fast path
   simply has no answer.
2. One pickle, ending where the data ends. The stream offers `peek`, so the C unpickler parses
   from one buffer and, when it returns, consumes exactly the bytes up to its STOP (frames
   included, even one that claims bytes after STOP). That must be the end of the data: the
   machine then also meets the end of the stream after one pickle. Files holding several
   pickles (legacy torch, whose first pickle is a number) take the full path.
3. Globals. Every global the C unpickler resolves goes through `find_class`, and only names
   the default-deny policy calls safe data reconstructors are answered (nested loaders and
   bytecode loaders excluded, even where safe, so the machine scans their payloads). EXT
   codes resolve through copyreg's registry and a cache that skips `find_class`, so the fast
   path runs only while both are empty (as they are unless a program registers extensions);
   then every EXT opcode fails. A STACK_GLOBAL operand computed by a call is a recorder, not
   a `str`, and the C unpickler refuses it (the machine reports it as unresolved). BUILD,
   APPEND(S), SETITEM(S) or ADDITEMS on a global (monkey-patching, which the machine reports
   even for safe names) raise from the recorder.
4. Expansion and depth, which the machine measures on symbolic values. `_shape` splits the
   data into opcodes first (the split every parser makes: fixed-size arguments, length
   prefixes, lines). The depth of any value grows by at most one per opcode, so a pickle of
   at most `max_depth` opcodes cannot nest deeper than the limit. The size a value would
   expand to counts paths in the graph of references; without GET or DUP every value has one
   parent, and each GET or DUP adds at most one extra parent to a value and to each version
   of it that in-place growth makes, which at most quadruples the number of paths: a pickle
   of n opcodes with k GET/BINGET/LONG_BINGET/DUP opcodes expands to at most n * 4**k
   elements, which must be within `max_expansion`.
5. Memory. At most MAX_BYTES of input and `max_depth` opcodes, so what the unpickler builds
   is small. Its memo is an array as long as the largest index a PUT or LONG_BINPUT names,
   zeroed when it grows (a four-byte index could ask for 32 GiB), so large indices are
   refused before parsing. A length field of BINBYTES, BINBYTES8 or BYTEARRAY8 makes it
   allocate before it reads; that allocation is never written to (the read comes up short
   and the load fails), and one larger than the system can map raises MemoryError, which
   ends the fast path like any other error.

tests/supplychain/scan/test_pickle_fast.py runs both on every malicious technique, on real
library pickles, on the bench corpus shapes and on fuzzed mutations, and asserts that the
fast path never says clean where the machine finds anything.
"""

from __future__ import annotations

import copyreg
import functools
import io
import pickle
import pickletools
import re
from typing import Any

from bastion.supplychain.scan.context import Limits
from bastion.supplychain.scan.pickle_policy import (
    CODE_LOADERS,
    NESTED_LOADERS,
    Kind,
    classify,
    normalise,
)

_IDENTIFIERS = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_NAME = re.compile(_IDENTIFIERS)
# Larger pickles hold model classes, not plain data, and the full path is what they need.
MAX_BYTES = 64 * 1024


class _Refused(Exception):
    """Raised inside the unpickler's hooks: the fast path has no answer for this pickle."""


class _Global:
    """What `find_class` returns: calling it makes a `_Made`; changing it refuses."""

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> _Made:
        return _Made()

    def _refuse(self, *args: Any) -> None:
        raise _Refused("a global object is changed by the pickle")

    __setstate__ = __setitem__ = append = extend = add = _refuse


class _Made:
    """The result of calling a safe reconstructor: takes state and items, keeps nothing."""

    __slots__ = ()

    def _accept(self, *args: Any) -> None:
        return None

    __setstate__ = __setitem__ = append = extend = add = _accept


class _Opaque:
    """A persistent id's object (a torch storage, say): inert."""

    __slots__ = ()


_GLOBAL, _OPAQUE = _Global(), _Opaque()


@functools.lru_cache(maxsize=4096)
def _safe_global(module: str, name: str) -> bool:
    """A name the symbolic machine resolves the same way and gives no finding: a safe data
    reconstructor that loads no nested payload and no bytecode. Only names that Python 2
    aliasing leaves alone: whether the loader maps one depends on the protocol in effect,
    which the C unpickler does not show its find_class."""
    if not (_NAME.fullmatch(module) and _NAME.fullmatch(name)):
        return False
    qualified = normalise(module, name)
    if qualified != f"{module}.{name}":
        return False
    if qualified in NESTED_LOADERS or qualified in CODE_LOADERS:
        return False
    return classify(qualified).kind is Kind.SAFE


class _Prefetched(io.BytesIO):
    """The data offered whole through `peek`: the C unpickler parses it from its own buffer
    and, when done, reads (consumes) exactly the bytes it used, up to its STOP."""

    def peek(self, size: int = 0) -> bytes:
        return self.getvalue()[self.tell() :]


class _Recorder(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not _safe_global(module, name):
            raise _Refused(f"global {module}.{name}")
        return _GLOBAL

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, str):  # PERSID's text line: pickletools reads escapes in it
            raise _Refused("text persistent id")
        return _OPAQUE


def _one_pickle_to_the_end(data: bytes) -> bool:
    """One pickle, parsed without error, whose STOP is the last byte, and whose value is not
    a number (the full path reads on after the legacy torch magic number)."""
    stream = _Prefetched(data)
    try:
        value = _Recorder(stream).load()
    except Exception:  # any failure, ours or the unpickler's, means "ask the machine"
        return False
    return stream.tell() == len(data) and not isinstance(value, int)


def _argument_kinds() -> list[int | None]:
    """Per opcode byte: the size of its fixed argument, or how the argument is delimited."""
    kinds: list[int | None] = [None] * 256
    for op in pickletools.opcodes:
        kind = op.arg.n if op.arg is not None else 0
        if op.arg is not None and op.arg.name == "stringnl_noescape_pair":
            kind = _TWO_LINES
        kinds[ord(op.code)] = kind
    return kinds


_LINE, _TWO_LINES = pickletools.UP_TO_NEWLINE, -100
_SIGNED_LENGTH = pickletools.TAKEN_FROM_ARGUMENT4
_LENGTH_BYTES = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: 4,
                 pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}
_KINDS = _argument_kinds()
_SHARING = frozenset(b"ghj2")  # GET, BINGET, LONG_BINGET, DUP
_STOP, _PUT, _LONG_BINPUT = ord("."), ord("p"), ord("r")
# The C unpickler keeps its memo in an array as long as the largest index it is given: keep
# that under a few megabytes (Python's pickler numbers memo entries from 0 upwards).
_MAX_MEMO_INDEX = 1 << 18
_MAX_PUT_DIGITS = 5


def _shape(data: bytes, max_opcodes: int) -> tuple[int, int] | None:
    """(opcodes, GET/BINGET/LONG_BINGET/DUP opcodes) of the one pickle `data` holds, split into
    opcodes the way every parser splits it; None when the data is not exactly one pickle, has
    more than `max_opcodes` opcodes, or gives a memo index that would make the C unpickler
    allocate (and zero) a large memo table."""
    kinds, end, at = _KINDS, len(data), 0
    count = sharing = 0
    while at < end and count < max_opcodes:
        op = data[at]
        kind = kinds[op]
        at += 1
        count += 1
        if kind is None:
            return None
        if op in _SHARING:
            sharing += 1
        if kind > 0:
            if op == _LONG_BINPUT and int.from_bytes(data[at : at + 4], "little") > _MAX_MEMO_INDEX:
                return None
            at += kind
        elif kind == 0:
            if op == _STOP:
                return (count, sharing) if at == end else None
        elif kind == _LINE:
            newline = data.find(b"\n", at)
            if newline < 0 or (op == _PUT and _digits(data[at:newline]) > _MAX_PUT_DIGITS):
                return None
            at = newline + 1
        elif kind == _TWO_LINES:
            first = data.find(b"\n", at)
            newline = data.find(b"\n", first + 1) if first >= 0 else -1
            if newline < 0:
                return None
            at = newline + 1
        else:
            size = _LENGTH_BYTES[kind]
            length = int.from_bytes(data[at : at + size], "little", signed=kind == _SIGNED_LENGTH)
            if length < 0:
                return None
            at += size + length
    return None


def _digits(text: bytes) -> int:
    return len(text) - len(text.translate(None, b"0123456789"))


def is_clean(data: bytes, limits: Limits) -> bool:
    """True only when the symbolic machine would find nothing in this one pickle."""
    if len(data) > MAX_BYTES or copyreg._inverted_registry or copyreg._extension_cache:
        return False
    shape = _shape(data, limits.max_depth)
    if shape is None:
        return False
    opcodes, sharing = shape
    if opcodes * 4**sharing > limits.max_expansion:
        return False
    return _one_pickle_to_the_end(data)
