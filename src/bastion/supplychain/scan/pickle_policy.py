"""Default-deny policy for the globals a pickle imports.

Every global a pickle names is imported by the loader (running that module's top-level
code) and is usually called. So the policy is an allowlist: known-safe reconstructors give
no finding, classes from trusted ML packages are low, anything else is high, and a known
gadget (code execution, file or network access, dynamic import, nested loading) is
critical with the reason spelled out. Names are normalised first (Python 2 aliases, dotted
names) and never imported.
"""

from __future__ import annotations

import _compat_pickle
import enum
import re
from dataclasses import dataclass


class Kind(enum.Enum):
    SAFE = "safe"
    TRUSTED = "trusted"
    UNKNOWN = "unknown"
    DANGEROUS = "dangerous"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str


def normalise(module: str, name: str, py2_names: bool = True) -> str:
    """The dotted name the loader would resolve. With `py2_names`, Python 2 aliases are
    mapped as pickle's find_class maps them, which it does only while the protocol in
    effect (the last PROTO opcode, 0 without one) is below 3: from protocol 3 on,
    `UserDict.OrderedDict` imports a module named UserDict, not collections."""
    module, name = module.strip(), name.strip()
    if not py2_names:
        return f"{module}.{name}" if module else name
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    head, _, rest = module.partition(".")
    if head in _PY2_MODULES:
        module = _PY2_MODULES[head] + ("." + rest if rest else "")
    return f"{module}.{name}" if module else name


_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg", "cPickle": "pickle"}

# Reconstructors that only rebuild data: no finding.
_SAFE = frozenset(
    """
    builtins.dict builtins.list builtins.tuple builtins.set builtins.frozenset builtins.bytearray
    builtins.bytes builtins.str builtins.int builtins.float builtins.complex builtins.bool
    builtins.slice builtins.range builtins.object builtins.NoneType builtins.Ellipsis
    copyreg._reconstructor copyreg.__newobj__ copyreg.__newobj_ex__
    collections.OrderedDict collections.defaultdict collections.deque collections.Counter
    collections.ChainMap
    datetime.datetime datetime.date datetime.time datetime.timedelta datetime.timezone
    decimal.Decimal fractions.Fraction uuid.UUID enum.Enum
    _codecs.encode codecs.encode
    io.BytesIO _io.BytesIO
    numpy.ndarray numpy.dtype numpy.core.multiarray._reconstruct numpy.core.multiarray.scalar
    numpy._core.multiarray._reconstruct numpy._core.multiarray.scalar
    numpy.core.numeric._frombuffer numpy._core.numeric._frombuffer
    numpy.ma.core._mareconstruct numpy.random._pickle.__randomstate_ctor
    numpy.random._pickle.__bit_generator_ctor numpy.random._pickle.__generator_ctor
    torch._utils._rebuild_tensor torch._utils._rebuild_tensor_v2 torch._utils._rebuild_tensor_v3
    torch._utils._rebuild_parameter torch._utils._rebuild_parameter_with_state
    torch._utils._rebuild_sparse_tensor torch._utils._rebuild_nested_tensor
    torch._utils._rebuild_qtensor torch._utils._rebuild_device_tensor_from_numpy
    torch._utils._rebuild_meta_tensor_no_storage torch._utils._rebuild_wrapper_subclass
    torch._tensor._rebuild_from_type torch._tensor._rebuild_from_type_v2
    torch.storage.UntypedStorage torch.storage.TypedStorage torch.storage._load_from_bytes
    torch.device torch.Size torch.Tensor torch.nn.parameter.Parameter
    pyarrow.lib._restore_array pyarrow.lib.type_for_alias pyarrow.lib.py_buffer
    torch.serialization._get_layout torch._utils._get_restore_location
    """.split()
)
# Typed storages, and the legacy tensor types that legacy checkpoints name.
_TORCH_STORAGES = re.compile(
    r"torch\.(cuda\.)?(Untyped|Float|Double|Half|BFloat16|Long|Int|Short|Char|Byte|Bool|"
    r"ComplexFloat|ComplexDouble|QUInt8|QInt8|QInt32|QUInt4x2|QUInt2x4)(Storage|Tensor)"
)
_NUMPY_SCALARS = re.compile(
    r"numpy\.(u?int(8|16|32|64|c|p)?|float(16|32|64|128)?|complex(64|128|256)?|bool_?|"
    r"object_|str_|bytes_|void|datetime64|timedelta64|u?longlong|half|single|double|"
    r"longdouble|c?single|c?double|clongdouble|u?byte|u?short|dtypes\.\w+DType)"
)
_TORCH_DTYPES = re.compile(
    r"torch\.(float(16|32|64)?|double|half|bfloat16|u?int(8|16|32|64)?|long|short|bool|"
    r"complex(32|64|128)|cfloat|cdouble|q(u?int8|int32)|float8_\w+)"
)

# Packages whose classes are expected in model files: a class given state is low.
# Where in those packages the classes live: torch's trusted classes are its nn modules and
# optimizers (torch also holds sympy expressions, data pipes and compilers, which run code
# when built), joblib's only its array wrappers.
_TRUSTED_PREFIXES = (
    "sklearn.", "numpy.", "scipy.", "pandas.", "xgboost.", "lightgbm.", "catboost.",
    "torch.nn.", "torch.optim.", "joblib.numpy_pickle.N",
)
# Cython's generated reconstructor (`__pyx_unpickle_Class`) only rebuilds its own class.
_CYTHON_RECONSTRUCTOR = re.compile(r"__pyx_unpickle_\w+")
# Pandas' reconstructor functions, as pandas' own pickles name them.
_TRUSTED_FUNCTIONS = frozenset(
    """
    pandas._libs.internals._unpickle_block pandas.core.indexes.base._new_Index
    pandas._libs.tslibs.timestamps._unpickle_timestamp
    pandas._libs.tslibs.timedeltas._timedelta_unpickle pandas._libs.tslibs.nattype.__nat_unpickle
    pandas._libs.sparse._unpickle_sparse_index pandas.core.arrays.sparse.array._new_SparseArray
    pandas._libs.tslibs.offsets._offset_map pandas.core.dtypes.dtypes._unpickle_dtype
    """.split()
)

# Known gadgets: dotted names (and whole modules) that run code, touch files or the
# network, import things by name, or load further serialised payloads.
_GADGET_MODULES = {
    "os": "operating-system access (commands, files, environment)",
    "posix": "operating-system access (commands, files, environment)",
    "nt": "operating-system access (commands, files, environment)",
    "subprocess": "runs external commands",
    "pty": "spawns processes",
    "commands": "runs external commands",
    "popen2": "runs external commands",
    "platform": "runs external commands",
    "shutil": "copies, moves and deletes files",
    "pathlib": "reads and writes files",
    "tempfile": "creates files",
    "glob": "lists files",
    "socket": "opens network connections",
    "ssl": "opens network connections",
    "http": "makes network requests",
    "urllib": "makes network requests",
    "urllib2": "makes network requests",
    "requests": "makes network requests",
    "httpx": "makes network requests",
    "ftplib": "makes network requests",
    "smtplib": "sends e-mail",
    "telnetlib": "opens network connections",
    "webbrowser": "opens URLs",
    "asyncio": "runs subprocesses and network connections",
    "multiprocessing": "starts processes",
    "ctypes": "calls native code",
    "cffi": "calls native code",
    "importlib": "imports modules by name",
    "imp": "imports modules by name",
    "zipimport": "imports modules from archives",
    "pkgutil": "imports modules by name",
    "runpy": "runs Python modules",
    "code": "executes Python source",
    "codeop": "compiles Python source",
    "pdb": "executes Python source",
    "bdb": "executes Python source",
    "timeit": "executes Python source",
    "trace": "executes Python source",
    "profile": "executes Python source",
    "cProfile": "executes Python source",
    "marshal": "loads compiled bytecode",
    "types": "builds functions from bytecode",
    "pickle": "loads a nested pickle",
    "_pickle": "loads a nested pickle",
    "dill": "loads a nested pickle",
    "cloudpickle": "loads a nested pickle",
    "shelve": "loads nested pickles from files",
    "sys": "changes the interpreter (modules, exit, hooks)",
    "builtins.exec": "executes Python source",
    "builtins.eval": "executes Python source",
    "builtins.compile": "compiles Python source",
    "builtins.execfile": "executes a Python file",
    "builtins.__import__": "imports modules by name",
    "builtins.getattr": "reaches any attribute (e.g. os.system) of an object",
    "builtins.setattr": "changes attributes of live objects",
    "builtins.delattr": "changes attributes of live objects",
    "builtins.globals": "exposes interpreter globals",
    "builtins.locals": "exposes interpreter locals",
    "builtins.vars": "exposes object namespaces",
    "builtins.open": "reads and writes files",
    "builtins.file": "reads and writes files",
    "builtins.input": "reads from the terminal",
    "builtins.breakpoint": "starts a debugger",
    "builtins.apply": "calls any callable",
    "builtins.reload": "re-imports modules",
    "builtins.map": "calls any callable over data",
    "builtins.filter": "calls any callable over data",
    "builtins.memoryview": "exposes raw memory",
    "builtins.type": "creates classes dynamically",
    "builtins.super": "reaches parent-class methods",
    "io.open": "reads and writes files",
    "io.FileIO": "reads and writes files",
    "_io.open": "reads and writes files",
    "_io.FileIO": "reads and writes files",
    "codecs.open": "reads and writes files",
    "operator": "calls methods or reads attributes by name (attrgetter, methodcaller)",
    "_operator": "calls methods or reads attributes by name (attrgetter, methodcaller)",
    "functools": "binds and calls any callable (partial, reduce)",
    "_functools": "binds and calls any callable (partial, reduce)",
    "itertools.starmap": "calls any callable over data",
    "pydoc": "imports objects by dotted name (locate)",
    "pip": "installs packages",
    "setuptools": "builds and installs packages",
    "distutils": "runs build commands",
    "ensurepip": "installs packages",
    "venv": "creates environments and runs commands",
    "signal": "changes signal handlers",
    "threading": "starts threads",
    "_thread": "starts threads",
    "gc": "reaches every live object",
    "inspect": "reaches frames and live objects",
    "linecache": "reads files",
    "fileinput": "reads files",
    "zipfile": "reads and writes archives",
    "tarfile": "reads and writes archives",
    "numpy.load": "loads a nested pickle or array file",
    "numpy.save": "writes files",
    "numpy.savez": "writes files",
    "numpy.savetxt": "writes files",
    "numpy.loadtxt": "reads files",
    "numpy.fromfile": "reads files",
    "numpy.memmap": "maps files into memory",
    "numpy.lib.format.open_memmap": "maps files into memory",
    "numpy.lib.npyio": "reads array files, unpickling their members (NpzFile, load)",
    "numpy.lib._npyio_impl": "reads array files, unpickling their members (NpzFile, load)",
    "numpy.distutils": "runs build commands",
    "numpy.f2py": "compiles and runs code",
    "numpy.testing": "runs commands",
    "torch.load": "loads a nested checkpoint",
    "torch.serialization.load": "loads a nested checkpoint",
    "torch.save": "writes files",
    "torch.hub": "downloads and runs code",
    "torch.jit": "loads and runs compiled code",
    "torch.utils.cpp_extension": "compiles and loads native code",
    "torch.package": "imports packaged code",
    "torch.ops": "calls native operators by name",
    "torch._C": "calls native internals",
    "torch.classes": "loads custom native classes",
    "torch.distributed": "opens network connections (rendezvous stores, RPC)",
    "torch.fx": "executes Python source stored in the file (GraphModule code)",
    "numpy.ctypeslib": "loads native libraries",
    "torch.utils.tensorboard": "writes event files and directories",
    "pandas.HDFStore": "opens and writes files",
    "pandas.ExcelWriter": "writes files",
    "joblib.Memory": "creates cache directories and runs cached functions",
    "joblib.memory": "creates cache directories and runs cached functions",
    "joblib.Parallel": "runs callables in worker processes",
    "joblib.parallel": "runs callables in worker processes",
    "pandas.read_pickle": "loads a nested pickle",
    "pandas.io": "reads files or URLs",
    "pandas.eval": "evaluates expressions",
    "pandas.core.computation": "evaluates expressions that can call any function (Expr)",
    "joblib.load": "loads a nested pickle",
    "joblib.numpy_pickle._unpickle": "loads a nested pickle from a file object",
    "joblib.externals": "starts worker processes and loads nested pickles (loky, cloudpickle)",
    "scipy._lib._uarray": "imports a function by module and attribute name (unpickle_function)",
    "sympy": "parses strings into expressions with eval (sympify)",
    "torch.utils._sympy": "sympy expressions: string arguments are parsed with eval (sympify)",
    "torch._inductor": "compiles and runs generated code",
    "torch._dynamo": "compiles and runs generated code",
    "torch.utils.data.datapipes": "decodes nested pickles and opens files (datapipe decoders)",
    "scipy.io": "reads and writes files",
    "keras.models.load_model": "loads a nested model",
    "tensorflow": "runs a TensorFlow graph with file and network ops",
}
# Reading a nested payload: bytes passed to these are analysed recursively.
NESTED_LOADERS = frozenset(
    """
    pickle.loads pickle._loads _pickle.loads dill.loads cloudpickle.loads
    torch.load torch.serialization.load torch.storage._load_from_bytes numpy.load joblib.load
    pandas.read_pickle
    """.split()
)
# Bytes arguments to these are code, not pickles: always critical.
CODE_LOADERS = frozenset("marshal.loads types.CodeType types.FunctionType".split())


def _gadget(qualified: str) -> str | None:
    """The reason a dotted name is a gadget: any run of its parts names a denied module or
    function, so an attribute path such as `torch._utils.os.system` is caught too; a path
    through a dunder attribute (`uuid.UUID.__init__.__globals__`) is how such paths reach
    modules that are not named at all."""
    parts = qualified.split(".")
    for start in range(len(parts)):
        for end in range(start + 1, len(parts) + 1):
            reason = _GADGET_MODULES.get(".".join(parts[start:end]))
            if reason is not None:
                return reason
    if any(_DUNDER.fullmatch(part) for part in parts[1:]):
        return "reaches interpreter internals (such as __globals__) through a dunder attribute"
    return None


_DUNDER = re.compile(r"__\w+__")


def classify(qualified: str, trusted_modules: frozenset[str] = frozenset()) -> Verdict:
    if qualified in _SAFE or any(
        pattern.fullmatch(qualified) for pattern in (_NUMPY_SCALARS, _TORCH_STORAGES, _TORCH_DTYPES)
    ):
        return Verdict(Kind.SAFE, "known data reconstructor")
    reason = _gadget(qualified)
    if reason is not None:
        return Verdict(Kind.DANGEROUS, reason)
    parts = qualified.split(".")
    leaf = parts[-1]
    if parts[0] in trusted_modules or qualified.startswith(_TRUSTED_PREFIXES):
        if qualified in _TRUSTED_FUNCTIONS or _CYTHON_RECONSTRUCTOR.fullmatch(leaf):
            return Verdict(Kind.TRUSTED, f"reconstructor from trusted package {parts[0]}")
        if leaf[:1].isupper() or parts[0] in trusted_modules:
            return Verdict(Kind.TRUSTED, f"class from trusted package {parts[0]}")
        return Verdict(Kind.UNKNOWN, f"function {leaf} of {parts[0]} is not a known reconstructor")
    return Verdict(Kind.UNKNOWN, "not on the allowlist of safe reconstructors")
