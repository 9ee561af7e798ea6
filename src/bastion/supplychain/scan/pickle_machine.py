"""A symbolic pickle machine: it follows a pickle's opcodes without executing any of them.

It tracks the stack and memo like the real unpickler, so a global whose module and name
come from the memo (STACK_GLOBAL after BINPUT/MEMOIZE games) is resolved; it records how
each imported global is used; it resolves EXT codes through the copyreg registry the way
the loader would; and it hands bytes given to a nested loader (`pickle.loads`,
`torch.load`, ...) back to content detection. It never imports a module named in a file.
Memory is linear in the number of opcodes: shared references are never copied, and the
size the loaded object *would* expand to is counted instead, to catch billion-laughs.
"""

from __future__ import annotations

import codecs
import copyreg
import io
import pickletools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext, stream_size
from bastion.supplychain.scan.pickle_policy import (
    CODE_LOADERS,
    NESTED_LOADERS,
    Kind,
    Verdict,
    classify,
    normalise,
)

MUTATED = "modified in place"


@dataclass(eq=False)
class GlobalRef:
    """An imported global: what the loader resolves with find_class."""

    qualified: str
    offset: int
    uses: set[str] = field(default_factory=set)
    size: int = 1
    arguments: str | None = None  # the literal arguments of its first call, for evidence


@dataclass(eq=False)
class Call:
    """The result of calling `func` with `args` (REDUCE, NEWOBJ, INST, OBJ)."""

    func: Any
    args: Any
    offset: int
    size: int = 1
    state: Any = None  # what BUILD gave it, if anything
    depth: int = 1
    items: list[Any] = field(default_factory=list)  # what APPEND/SETITEM added to it
    shared: bool = False  # fetched again by GET or DUP, so it may grow after use


@dataclass(eq=False)
class Container:
    """A list, tuple, dict, set or frozenset under construction."""

    kind: str
    items: list[Any]
    size: int = 1
    depth: int = 1
    shared: bool = False  # fetched again by GET or DUP, so it may grow after use


# Values the machine knows are not strings: the loader refuses them as a global's name.
_NEVER_STR = (type(None), bool, int, float, bytes, bytearray, Container)


@dataclass(eq=False)
class Opaque:
    """A value the machine cannot know statically (persistent ids, out-of-band buffers)."""

    what: str
    size: int = 1


def _never_str(value: Any) -> bool:
    """True when the loader would hold a non-string here: a literal that is not one, or an
    instance of a class from a trusted package (NEWOBJ of sklearn's LogisticRegression, say)."""
    if isinstance(value, _NEVER_STR):
        return True
    if not (isinstance(value, Call) and isinstance(value.func, GlobalRef)):
        return False
    qualified = value.func.qualified
    return classify(qualified).kind is Kind.TRUSTED and qualified.rpartition(".")[2][:1].isupper()


_CONTAINER_OPS = {
    "LIST": "list",
    "TUPLE": "tuple",
    "DICT": "dict",
    "FROZENSET": "frozenset",
}
_EMPTY_OPS = {
    "EMPTY_LIST": "list",
    "EMPTY_TUPLE": "tuple",
    "EMPTY_DICT": "dict",
    "EMPTY_SET": "set",
}
_CONSTANT_OPS = frozenset(
    """INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT STRING BINSTRING
    SHORT_BINSTRING UNICODE SHORT_BINUNICODE BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES
    BINBYTES8 BYTEARRAY8""".split()
)
_MEMO_GETS = frozenset("GET BINGET LONG_BINGET".split())
_MEMO_PUTS = frozenset("PUT BINPUT LONG_BINPUT".split())
_NOOPS = frozenset("FRAME READONLY_BUFFER".split())


def _importable(dotted: str) -> bool:
    return all(part.isidentifier() for part in dotted.strip().split("."))


def size_of(value: Any) -> int:
    return getattr(value, "size", 1)


def depth_of(*values: Any) -> int:
    """How deeply the deepest of `values` nests (scalars and globals are 0)."""
    return max((getattr(value, "depth", 0) for value in values), default=0)


_SMALL_READ = 1 << 16


def _read_line(f: Any) -> bytes:
    line = f.readline()
    if not line.endswith(b"\n"):
        raise ValueError("no newline found when reading a text argument")
    return line[:-1]


def _c_number(text: bytes) -> bytes:
    """The C unpickler parses numbers with C functions that stop at a NUL byte: to
    pickle.load and torch.load, 'I5\\0junk' is 5."""
    return text.split(b"\0", 1)[0]


def _read_int(f: Any) -> int:
    """INT as the loaders read it: C with strtol(base 0), Python with int(text, 0), so
    '0x10' and '0o7' are numbers (pickletools accepts base 10 only)."""
    text = _c_number(_read_line(f))
    if text in (b"00", b"01"):
        return text == b"01"
    try:
        return int(text, 0)
    except ValueError:
        return int(text, 8)  # strtol reads '010' as octal, which int(text, 0) refuses


def _read_long(f: Any) -> int:
    text = _read_line(f)
    return int(_c_number(text[:-1] if text.endswith(b"L") else text), 0)


def _read_float(f: Any) -> float:
    return float(_c_number(_read_line(f)))


def _read_memo_key(f: Any) -> int:
    return int(_c_number(_read_line(f)))


def _read_string(f: Any) -> str:
    """STRING: torch.load decodes it as UTF-8, pickle.load as ASCII (pickletools refuses
    anything but ASCII); keep every byte, as latin-1."""
    text = _read_line(f)
    if len(text) < 2 or text[:1] != text[-1:] or text[:1] not in (b"'", b'"'):
        raise ValueError("STRING argument without matching quotes")
    return codecs.escape_decode(text[1:-1])[0].decode("latin-1")


# Text-line arguments that pickletools reads more strictly than the loaders: a stream it
# refused there would hide every opcode after it from the scan while the loader runs them.
_LOADER_READERS = {
    "INT": _read_int,
    "LONG": _read_long,
    "FLOAT": _read_float,
    "GET": _read_memo_key,
    "PUT": _read_memo_key,
    "STRING": _read_string,
}


def _quietly(reader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The reader without the DeprecationWarning that codecs.escape_decode raises for odd
    escapes in protocol-0 text (hostile files are full of them). Only the text readers that
    unescape need it, so the cost of catching warnings is paid by those rare opcodes alone."""

    def read(f: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return reader(f)

    return read


_UNESCAPING_READERS = (pickletools.read_stringnl_noescape,
                       pickletools.read_stringnl_noescape_pair, _read_string)


def _reader(op: pickletools.OpcodeInfo) -> Callable[[Any], Any] | None:
    reader = _LOADER_READERS.get(op.name, op.arg and op.arg.reader)
    return _quietly(reader) if reader in _UNESCAPING_READERS else reader


# Opcode byte -> (name, argument reader or None).
_OPCODES = {op.code.encode("latin-1"): (op.name, _reader(op)) for op in pickletools.opcodes}


def quiet_genops(stream: Any) -> Iterator[tuple[str, Any, int]]:
    """(opcode name, argument, offset) up to STOP, like pickletools.genops but with arguments
    read as the loaders read them, and without the DeprecationWarning pickletools raises for
    odd escapes in protocol-0 strings (see _quietly)."""
    read, tell, opcodes = stream.read, stream.tell, _OPCODES
    while True:
        pos = tell()
        code = read(1)
        entry = opcodes.get(code)
        if entry is None:
            raise ValueError(f"opcode {code!r} unknown" if code else "pickle exhausted")
        name, reader = entry
        yield name, (None if reader is None else reader(stream)), pos
        if code == b".":
            return


class _CappedReads:
    """The stream as pickletools reads it, except that read(n) never asks for more than
    what is left: a length field claiming 2**62 bytes is a truncated pickle, not a 4 EiB
    allocation. Reads go to the stream's current position, so a subclass may seek it."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._end = stream_size(stream)
        self.readline = stream.readline  # bound directly: called once per opcode or more
        self.tell = stream.tell

    def read(self, n: int = -1) -> bytes:
        if 0 <= n <= _SMALL_READ:  # most reads: too small to matter, not worth a tell()
            return self._stream.read(n)
        if n < 0:
            return self._stream.read()
        return self._stream.read(min(n, max(0, self._end - self._stream.tell())))


def _capped(stream: BinaryIO) -> Any:
    """BytesIO already never reads past its end; other streams get the cap."""
    return stream if type(stream) is io.BytesIO else _CappedReads(stream)


class MalformedPickle(Exception):
    def __init__(self, message: str, offset: int | None) -> None:
        super().__init__(message)
        self.offset = offset


class PickleMachine:
    """Runs one pickle (up to STOP) symbolically; subclasses react to BUILD (joblib)."""

    def __init__(self, stream: BinaryIO, loc: Location, ctx: ScanContext) -> None:
        self.stream = stream
        self.loc = loc
        self.ctx = ctx
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.globals: list[GlobalRef] = []
        self.findings: list[Finding] = []
        self.opcodes = 0
        self.protocol = 0  # set by PROTO; below 3 the loader maps Python 2 names
        self.largest = 1
        self.deepest = 0
        self.value: Any = None  # what the pickle loads to, once STOP is reached
        self.late_growth = False  # a value grew after it could have been referenced
        # Payloads already given to a nested loader, by id (kept alive so ids stay unique):
        # a memoised payload loaded many times is scanned once, not once per load.
        self.nested_payloads: dict[int, Any] = {}
        self.literal_loads: dict[int, bool] = {}  # id(GlobalRef) -> all calls had literal bytes

    # -- driving -------------------------------------------------------------------------

    def run(self, opcode_budget: int) -> Any:
        """Follow opcodes up to STOP; raise MalformedPickle where the real loader would fail
        (everything before that point has been analysed, as it would have run)."""
        pos = None  # the last opcode read whole: where a break is reported
        stream = _capped(self.stream)
        read, tell, steps = stream.read, stream.tell, _STEPS
        try:
            # quiet_genops inlined: this loop is most of a scan's time
            while True:
                at = tell()
                code = read(1)
                step = steps.get(code)
                if step is None:
                    raise ValueError(f"opcode {code!r} unknown" if code else "pickle exhausted")
                handler, reader = step
                arg = None if reader is None else reader(stream)
                pos = at
                self.opcodes += 1
                if self.opcodes > opcode_budget:
                    raise LimitExceeded(f"more than {self.ctx.limits.max_opcodes} opcodes")
                if handler is None:  # STOP
                    self.value = self._pop()
                    return self.value
                handler(self, arg, pos)
        except MalformedPickle as exc:
            exc.offset = pos if exc.offset is None else exc.offset
            raise
        except (ValueError, EOFError, UnicodeDecodeError, OverflowError) as exc:
            raise MalformedPickle(str(exc), pos) from None
        except IndexError:
            raise MalformedPickle("stack underflow", pos) from None

    # -- opcodes: one handler each, found through _HANDLERS by opcode name --------------

    def _op_constant(self, arg: Any, pos: int) -> None:
        self.stack.append(arg)

    def _op_proto(self, arg: Any, pos: int) -> None:
        self.protocol = arg

    def _op_noop(self, arg: Any, pos: int) -> None:
        pass

    def _op_put(self, arg: Any, pos: int) -> None:
        self.memo[arg] = self.stack[-1]

    def _op_memoize(self, arg: Any, pos: int) -> None:
        self.memo[len(self.memo)] = self.stack[-1]

    def _op_get(self, arg: Any, pos: int) -> None:
        if arg not in self.memo:
            raise MalformedPickle(f"memo key {arg} was never stored", pos)
        self.stack.append(_shared(self.memo[arg]))

    def _op_mark(self, arg: Any, pos: int) -> None:
        self.marks.append(len(self.stack))

    def _op_none(self, arg: Any, pos: int) -> None:
        self.stack.append(None)

    def _op_true(self, arg: Any, pos: int) -> None:
        self.stack.append(True)

    def _op_false(self, arg: Any, pos: int) -> None:
        self.stack.append(False)

    def _op_pop(self, arg: Any, pos: int) -> None:
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self._pop()

    def _op_pop_mark(self, arg: Any, pos: int) -> None:
        self._pop_mark()

    def _op_dup(self, arg: Any, pos: int) -> None:
        self.stack.append(_shared(self.stack[-1]))

    def _op_global(self, arg: Any, pos: int) -> None:
        module, _, attr = arg.partition(" ")
        self.stack.append(self._global(module, attr, pos))

    def _op_stack_global(self, arg: Any, pos: int) -> None:
        attr, module = self._pop(), self._pop()
        if isinstance(module, str) and isinstance(attr, str):
            self.stack.append(self._global(module, attr, pos))
        elif _never_str(module) or _never_str(attr):
            # The loader stops here ("STACK_GLOBAL requires str"): nothing is imported. A
            # plain pickle.load of a joblib file with an object array reaches this.
            raise MalformedPickle("STACK_GLOBAL operand is not a string", pos)
        else:
            self._unresolved("STACK_GLOBAL operands are computed, not literal strings", pos)

    def _op_ext(self, arg: Any, pos: int) -> None:
        self._extension(arg, pos)

    def _op_reduce(self, arg: Any, pos: int) -> None:
        args, func = self._pop(), self._pop()
        self.stack.append(self._call(func, args, pos, "called"))

    def _op_newobj(self, arg: Any, pos: int) -> None:
        args, cls = self._pop(), self._pop()
        self.stack.append(self._call(cls, args, pos, "instantiated"))

    def _op_newobj_ex(self, arg: Any, pos: int) -> None:
        kwargs, args, cls = self._pop(), self._pop(), self._pop()
        self.stack.append(self._call(cls, Container("tuple", [args, kwargs]), pos, "instantiated"))

    def _op_inst(self, arg: Any, pos: int) -> None:
        module, _, attr = arg.partition(" ")
        args = self._container("tuple", self._pop_mark())
        self.stack.append(self._call(self._global(module, attr, pos), args, pos, "instantiated"))

    def _op_obj(self, arg: Any, pos: int) -> None:
        items = self._pop_mark()
        if not items:
            raise IndexError
        args = self._container("tuple", items[1:])
        self.stack.append(self._call(items[0], args, pos, "instantiated"))

    def _op_build(self, arg: Any, pos: int) -> None:
        state = self._pop()
        self._build(self.stack[-1], state, pos)

    def _op_persid(self, arg: Any, pos: int) -> None:
        self.stack.append(Opaque(f"persistent id {arg!r}"))

    def _op_binpersid(self, arg: Any, pos: int) -> None:
        self._pop()  # never rendered: it may be a huge or deeply nested structure
        self.stack.append(Opaque("persistent id"))

    def _op_next_buffer(self, arg: Any, pos: int) -> None:
        self.stack.append(Opaque("out-of-band buffer"))

    # -- stack helpers -------------------------------------------------------------------

    def _push(self, value: Any) -> None:
        self.stack.append(value)

    def _pop(self) -> Any:
        if self.marks and self.marks[-1] >= len(self.stack):
            raise MalformedPickle("pop across a MARK", None)
        return self.stack.pop()

    def _pop_mark(self) -> list[Any]:
        if not self.marks:
            raise MalformedPickle("MARK expected on the stack", None)
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def _container(self, kind: str, items: list[Any]) -> Container:
        size = 1 + sum(size_of(item) for item in items)
        return Container(kind, items, self._grow(size), self._deepen(1 + depth_of(*items)))

    def _grow(self, size: int) -> int:
        """Track what the loaded object would expand to; cap it so ints stay small."""
        cap = self.ctx.limits.max_expansion + 1
        size = min(size, cap)
        self.largest = max(self.largest, size)
        return size

    def _deepen(self, depth: int) -> int:
        """Track how deeply the loaded object nests (recursive consumers overflow the stack)."""
        self.deepest = max(self.deepest, depth)
        return depth

    def _extend(self, name: str) -> None:
        if name == "APPEND":
            items = [self._pop()]
        elif name == "SETITEM":
            value, key = self._pop(), self._pop()
            items = [key, value]
        else:
            items = self._pop_mark()
        target = self.stack[-1]
        if isinstance(target, GlobalRef):
            target.uses.add(MUTATED)  # e.g. SETITEM on os.environ or copyreg's registry
            return
        if isinstance(target, Call):
            # list.extend / dict.__setitem__ on a constructed object: the loader calls the
            # object's own append/extend/__setitem__, so record that as a use of its class.
            self._mark(target.func, "given items")
        if isinstance(target, (Container, Call)):
            self.late_growth = self.late_growth or target.shared
            target.items.extend(items)
            target.size = self._grow(target.size + sum(size_of(item) for item in items))
            target.depth = self._deepen(max(target.depth, 1 + depth_of(*items)))

    # -- globals and calls ---------------------------------------------------------------

    def _global(self, module: str, attr: str, pos: int) -> GlobalRef:
        if not (_importable(module) and _importable(attr)):
            # find_class fails on such a name, so the load stops here: nothing imported.
            raise MalformedPickle(f"global {module!r} {attr!r} is not an importable name", pos)
        ref = GlobalRef(normalise(module, attr, py2_names=self.protocol < 3), pos)
        ref.uses.add("referenced")
        self.globals.append(ref)
        return ref

    def _extension(self, code: int, pos: int) -> None:
        key = copyreg._inverted_registry.get(code)  # what the loading process would resolve
        if key is None:
            self._unresolved(f"extension code {code} is not in the copyreg registry", pos)
        else:
            self._push(self._global(key[0], key[1], pos))

    def _unresolved(self, reason: str, pos: int) -> None:
        self.findings.append(
            rules.PKL_UNRESOLVED.finding(
                f"Global imported by a name the scanner cannot resolve: {reason}",
                self.loc.at(pos),
                evidence={"reason": reason},
            )
        )
        self._push(Opaque("unresolved global"))

    def _mark(self, func: Any, use: str) -> None:
        if isinstance(func, GlobalRef):
            func.uses.add(use)

    def _call(self, func: Any, args: Any, pos: int, use: str) -> Call:
        self._mark(func, use)
        if isinstance(args, Container):
            for item in args.items:
                self._mark(item, "passed as an argument")
        if isinstance(func, GlobalRef):
            if func.arguments is None:
                func.arguments = describe_arguments(args)
            self._inspect_call(func, args, pos)
        size = self._grow(1 + size_of(func) + size_of(args))
        return Call(func, args, pos, size, depth=self._deepen(1 + depth_of(func, args)))

    def _inspect_call(self, func: GlobalRef, args: Any, pos: int) -> None:
        first = args.items[0] if isinstance(args, Container) and args.items else None
        if func.qualified in ("copyreg._reconstructor", "copyreg.__newobj__"):
            self._mark(first, "instantiated")
        if func.qualified in NESTED_LOADERS:
            payload = _literal_bytes(first)
            previous = self.literal_loads.get(id(func), True)
            self.literal_loads[id(func)] = previous and payload is not None
            if payload is not None and id(first) not in self.nested_payloads:
                self.nested_payloads[id(first)] = first
                self._scan_nested(func.qualified, payload, pos)
        elif func.qualified in CODE_LOADERS:
            func.uses.add("given bytecode")

    def _scan_nested(self, loader: str, payload: bytes, pos: int) -> None:
        loc = self.loc.inside(f"{loader}@{pos}")
        self.findings.extend(self.ctx.scan_bytes(payload, loc))

    def _build(self, target: Any, state: Any, pos: int) -> None:
        if isinstance(target, GlobalRef):
            target.uses.add(MUTATED)  # setattr on a class or module object: monkey-patching
        elif isinstance(target, Call):
            self.late_growth = self.late_growth or target.shared
            target.state = state
            self._mark(target.func, "given state")
            if isinstance(target.func, GlobalRef) and target.func.qualified in (
                "copyreg._reconstructor",
                "copyreg.__newobj__",
            ):
                first = target.args.items[0] if isinstance(target.args, Container) else None
                self._mark(first, "given state")
            target.size = self._grow(target.size + size_of(state))
            target.depth = self._deepen(max(target.depth, 1 + depth_of(state)))

    # -- verdicts ------------------------------------------------------------------------

    def verdicts(self) -> list[Finding]:
        """One finding per distinct global, by the default-deny policy."""
        by_name: dict[str, list[GlobalRef]] = {}
        for ref in self.globals:
            by_name.setdefault(ref.qualified, []).append(ref)
        findings = list(self.findings)
        for qualified, refs in by_name.items():
            finding = self._verdict(qualified, refs)
            if finding is not None:
                findings.append(finding)
        expanded = self._expanded() if self.late_growth else self.largest
        if max(self.largest, expanded) > self.ctx.limits.max_expansion:
            findings.append(
                rules.PKL_EXPANSION.finding(
                    "Pickle expands to more than "
                    f"{self.ctx.limits.max_expansion:,} elements through shared references",
                    self.loc,
                    evidence={"limit": self.ctx.limits.max_expansion},
                )
            )
        if self.deepest > self.ctx.limits.max_depth:
            findings.append(
                rules.PKL_DEEP_NESTING.finding(
                    f"Pickle nests values more than {self.ctx.limits.max_depth:,} levels deep",
                    self.loc,
                    evidence={"limit": self.ctx.limits.max_depth, "depth": self.deepest},
                )
            )
        return findings

    def _expanded(self) -> int:
        """The largest tree size of any shared value, recounted now: a list filled *after*
        it was referenced many times (late APPENDs, SETITEMs, BUILDs) escapes the running
        count. Iterative post-order over the reference graph; a cycle counts once; capped."""
        cap = self.ctx.limits.max_expansion + 1
        sizes: dict[int, int] = {}
        largest = 1
        pending = [(root, False) for root in [*self.memo.values(), self.value]]
        while pending:
            node, children_done = pending.pop()
            if children_done:
                size = min(cap, 1 + sum(sizes.get(id(child), 1) for child in _children(node)))
                sizes[id(node)] = size
                largest = max(largest, size)
            elif id(node) not in sizes and isinstance(node, (Container, Call)):
                sizes[id(node)] = 1  # provisional, so that a cycle back to it ends here
                pending.append((node, True))
                pending.extend((child, False) for child in _children(node))
        return largest

    def _verdict(self, qualified: str, refs: list[GlobalRef]) -> Finding | None:
        uses = sorted(set().union(*(ref.uses for ref in refs)) - {"referenced"}) or ["referenced"]
        loc = self.loc.at(refs[0].offset)
        evidence: dict[str, Any] = {"global": qualified, "uses": uses, "count": len(refs)}
        arguments = next((r.arguments for r in refs if r.arguments is not None), None)
        if arguments is not None:
            evidence["arguments"] = arguments
        if qualified in NESTED_LOADERS and all(self.literal_loads.get(id(r), False) for r in refs):
            if qualified == "torch.storage._load_from_bytes":
                return None  # how torch pickles a storage; the payload was scanned above
            return rules.PKL_NESTED.finding(
                f"Pickle hides a nested payload loaded by {qualified}", loc, evidence=evidence
            )
        verdict = classify(qualified, self.ctx.trusted_modules)
        if verdict.kind is Kind.SAFE and qualified in NESTED_LOADERS:
            # torch.storage._load_from_bytes is torch.load(weights_only=False): safe only
            # with literal bytes, scanned above; computed bytes cannot be checked.
            verdict = Verdict(Kind.DANGEROUS, "loads a nested checkpoint from bytes computed "
                              "at load time, which cannot be scanned")
        if MUTATED in uses:
            evidence["reason"] = "the pickle changes a global object in the loading process"
            return rules.PKL_GADGET.finding(
                f"{qualified} is modified on load (monkey-patching the loading process)",
                loc,
                evidence=evidence,
            )
        evidence["reason"] = verdict.reason
        if verdict.kind is Kind.SAFE:
            return None
        if verdict.kind is Kind.DANGEROUS:
            how = "called" if "called" in uses or "instantiated" in uses else ", ".join(uses)
            return rules.PKL_GADGET.finding(
                f"{qualified} ({how}): {verdict.reason}", loc, evidence=evidence
            )
        if verdict.kind is Kind.TRUSTED:
            return rules.PKL_TRUSTED.finding(
                f"{qualified} from a trusted ML package is rebuilt on load", loc, evidence=evidence
            )
        return rules.PKL_UNKNOWN.finding(
            f"{qualified} is imported and {', '.join(uses)} on load; it is not on the allowlist",
            loc,
            evidence=evidence,
        )


def _shared(value: Any) -> Any:
    if isinstance(value, (Container, Call)):
        value.shared = True
    return value


def _children(node: Any) -> list[Any]:
    if isinstance(node, Container):
        return node.items
    return [node.func, node.args, node.state, *node.items]


Handler = Callable[["PickleMachine", Any, int], None]


def _empty_handler(kind: str) -> Handler:
    return lambda machine, arg, pos: machine.stack.append(Container(kind, []))


def _collect_handler(kind: str) -> Handler:
    return lambda machine, arg, pos: machine.stack.append(
        machine._container(kind, machine._pop_mark())
    )


def _tuple_handler(count: int) -> Handler:
    def handler(machine: PickleMachine, arg: Any, pos: int) -> None:
        if len(machine.stack) - (machine.marks[-1] if machine.marks else 0) < count:
            raise IndexError
        items = machine.stack[-count:]
        del machine.stack[-count:]
        machine.stack.append(machine._container("tuple", items))

    return handler


def _extend_handler(name: str) -> Handler:
    return lambda machine, arg, pos: machine._extend(name)


def _handlers() -> dict[str, Handler]:
    m = PickleMachine
    table: dict[str, Handler] = {name: m._op_constant for name in _CONSTANT_OPS}
    table.update({name: m._op_put for name in _MEMO_PUTS})
    table.update({name: m._op_get for name in _MEMO_GETS})
    table.update({name: m._op_noop for name in _NOOPS})
    table["PROTO"] = m._op_proto
    table.update({name: _empty_handler(kind) for name, kind in _EMPTY_OPS.items()})
    table.update({name: _collect_handler(kind) for name, kind in _CONTAINER_OPS.items()})
    table.update({f"TUPLE{n}": _tuple_handler(n) for n in (1, 2, 3)})
    for name in ("APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS"):
        table[name] = _extend_handler(name)
    for name in ("EXT1", "EXT2", "EXT4"):
        table[name] = m._op_ext
    table.update(
        MEMOIZE=m._op_memoize, MARK=m._op_mark, NONE=m._op_none, NEWTRUE=m._op_true,
        NEWFALSE=m._op_false, POP=m._op_pop, POP_MARK=m._op_pop_mark, DUP=m._op_dup,
        GLOBAL=m._op_global, STACK_GLOBAL=m._op_stack_global, REDUCE=m._op_reduce,
        NEWOBJ=m._op_newobj, NEWOBJ_EX=m._op_newobj_ex, INST=m._op_inst, OBJ=m._op_obj,
        BUILD=m._op_build, PERSID=m._op_persid, BINPERSID=m._op_binpersid,
        NEXT_BUFFER=m._op_next_buffer,
    )
    missing = {op.name for op in pickletools.opcodes} - set(table) - {"STOP"}
    if missing:  # a newer pickletools knows opcodes this machine does not follow yet
        raise RuntimeError(f"opcodes without a handler: {sorted(missing)}")
    return table


_HANDLERS = _handlers()
# Opcode byte -> (handler, argument reader); STOP's handler is None (run returns there).
_STEPS = {
    code: (None if name == "STOP" else _HANDLERS[name], reader)
    for code, (name, reader) in _OPCODES.items()
}


def describe_arguments(args: Any, limit: int = 200) -> str:
    """A short, printable rendering of call arguments (e.g. the command a payload runs)."""
    items = args.items if isinstance(args, Container) else [args]

    def show(item: Any) -> str:
        if isinstance(item, (str, bytes, bytearray, int, float, bool)) or item is None:
            return repr(item[:limit] if isinstance(item, (str, bytes, bytearray)) else item)
        if isinstance(item, GlobalRef):
            return item.qualified
        return "<object>"

    text = (
        "("
        + ", ".join(show(item) for item in items[:5])
        + (", ..." if len(items) > 5 else "")
        + ")"
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Protocol 2 writes bytes as _codecs.encode(text, 'latin1'). Only these encodings are
# applied here: a codec named by the file is never looked up (lookup may import modules).
_TEXT_ENCODINGS = {
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "ascii": "ascii",
}


def _literal_bytes(value: Any) -> bytes | None:
    """Bytes the loader would receive: a literal, a literal wrapped in io.BytesIO, or text
    encoded the way protocol 2 writes bytes."""
    while (
        isinstance(value, Call)
        and isinstance(value.func, GlobalRef)
        and isinstance(value.args, Container)
        and value.args.items
    ):
        name, args = value.func.qualified, value.args.items
        if name in ("io.BytesIO", "_io.BytesIO"):
            value = args[0]
        elif name in ("_codecs.encode", "codecs.encode") and len(args) == 2:
            return _encoded(*args)
        else:
            return None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin-1", errors="ignore")
    return None


def _encoded(text: Any, encoding: Any) -> bytes | None:
    if not (isinstance(text, str) and isinstance(encoding, str)):
        return None
    known = _TEXT_ENCODINGS.get(encoding.strip().lower())
    try:
        return None if known is None else text.encode(known)
    except UnicodeEncodeError:
        return None


def analyse_pickles(
    stream: BinaryIO,
    loc: Location,
    ctx: ScanContext,
    *,
    machine: type[PickleMachine] = PickleMachine,
    max_pickles: int | None = None,
) -> Iterator[tuple[PickleMachine, Any]]:
    """Analyse consecutive pickles in a stream; yields each machine and the loaded value.

    Stops at end of stream, at `max_pickles`, or at trailing bytes that are not a pickle.
    A pickle that breaks partway yields a finding after its earlier opcodes were analysed.
    """
    budget = ctx.limits.max_opcodes
    count = 0
    while max_pickles is None or count < max_pickles:
        start = stream.tell()
        if not stream.read(1):
            return
        stream.seek(start)
        sm = machine(stream, loc, ctx)
        try:
            value = sm.run(budget)
        except LimitExceeded as exc:
            sm.findings.append(rules.limit_finding(str(exc), loc))
            yield sm, None
            return
        except MalformedPickle as exc:
            if count > 0 and sm.opcodes <= 1:
                return  # trailing data after complete pickles: the loader never reads it
            sm.findings.append(
                rules.PKL_MALFORMED.finding(
                    f"Pickle stream breaks at offset {exc.offset}: {exc}",
                    loc.at(exc.offset),
                    evidence={"error": str(exc), "opcodes_before_break": sm.opcodes},
                    severity=Severity.MEDIUM,
                )
            )
            yield sm, None
            return
        budget -= sm.opcodes
        count += 1
        yield sm, value
