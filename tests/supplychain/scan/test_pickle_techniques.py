"""Every technique in the malicious catalogue is caught, and the pickle policy and symbolic
machine behave as specified. Fixtures come from raw opcodes; none is ever loaded."""

from __future__ import annotations

import contextlib
import copyreg
import io
import pickletools
import time
from collections.abc import Iterator
from pathlib import Path
from pickle import BINGET, BINPUT, BUILD, EMPTY_DICT, INST, LIST, MARK, NEWOBJ, OBJ

import pytest

import bastion
from bastion.demo.malicious import (
    EXTENSION_CODES,
    EXTENSION_TARGET,
    TECHNIQUES,
    UNREGISTERED_EXTENSION,
    call,
    global_ref,
    literal,
    pickle_of,
    tuple_of,
)
from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.pickle_machine import analyse_pickles
from bastion.supplychain.scan.pickle_policy import Kind, classify, normalise

GADGET = "BST-SCAN-PKL-001"
UNRESOLVED = "BST-SCAN-PKL-006"

# The gadget each technique must be reported for; the rest wrap os.system.
EXPECTED_GADGET = {
    "posix_system": "posix.system",
    "nt_system": "nt.system",
    "os_popen": "os.popen",
    "subprocess_popen": "subprocess.Popen",
    "subprocess_run": "subprocess.run",
    "subprocess_call": "subprocess.call",
    "subprocess_check_output": "subprocess.check_output",
    "subprocess_getoutput": "subprocess.getoutput",
    "builtins_exec": "builtins.exec",
    "builtins_eval": "builtins.eval",
    "builtins_open": "builtins.open",
    "builtins_compile": "builtins.compile",
    "builtins_import": "builtins.__import__",
    "builtins_getattr": "builtins.getattr",
    "io_open": "io.open",
    "codecs_open": "codecs.open",
    "shutil_copyfile": "shutil.copyfile",
    "runpy_run_code": "runpy._run_code",
    "cprofile_run": "cProfile.run",
    "pip_main": "pip.main",
    "pip_internal_main": "pip._internal.cli.main.main",
    "importlib_import_module": "importlib.import_module",
    "pkgutil_resolve_name": "pkgutil.resolve_name",
    "pydoc_locate": "pydoc.locate",
    "operator_attrgetter": "operator.attrgetter",
    "operator_itemgetter": "operator.itemgetter",
    "operator_methodcaller": "operator.methodcaller",
    "functools_partial": "functools.partial",
    "newobj_partial": "functools.partial",
    "newobj_ex_partial": "functools.partial",
    "marshal_loads_function": "marshal.loads",
    "types_codetype": "types.CodeType",
    "dotted_torch_utils_os_system": "torch._utils.os.system",
    "dotted_torch_serialization_global": "torch.serialization.os.system",
    "dotted_uuid_os_system": "uuid.os.system",
    "dotted_pathlib_path_touch": "pathlib.Path.touch",
    "py2_builtin_eval": "builtins.eval",
    "py2_copy_reg_reconstructor": "subprocess.Popen",
    "trusted_package_side_effect": "torch.utils.tensorboard.SummaryWriter",
    "nested_torch_load_from_computed_bytes": "torch.storage._load_from_bytes",
    "dotted_dunder_globals_chain": "uuid.UUID.__init__.__globals__",
    "torch_fx_graph_module_source": "torch.fx.graph_module.reduce_graph_module",
    "pandas_expr_eval": "pandas.core.computation.expr.Expr",
    "scipy_uarray_unpickle_function": "scipy._lib._uarray._backend.unpickle_function",
    "joblib_unpickle_nested": "joblib.numpy_pickle._unpickle",
    "loky_cloudpickle_wrapper_nested":
        "joblib.externals.loky.cloudpickle_wrapper._reconstruct_wrapper",
    "torch_sympy_sympify": "torch.utils._sympy.functions.FloorDiv",
    "numpy_npzfile_allow_pickle": "numpy.lib.npyio.NpzFile",
    "torch_datapipe_decoder_pickle":
        "torch.utils.data.datapipes.iter.routeddecoder.RoutedDecoderIterDataPipe",
}
EXTENSION_TECHNIQUES = {*EXTENSION_CODES, "ext_unregistered"}


def scan_technique(name: str, directory: Path, marker: Path) -> list[Finding]:
    filename, data = TECHNIQUES[name](marker)
    path = directory / filename
    path.write_bytes(data)
    return bastion.scan(path).findings


def gadgets(findings: list[Finding]) -> dict[str, Finding]:
    return {f.evidence["global"]: f for f in findings if f.rule_id == GADGET}


def test_catalogue_is_large_and_reproducible(tmp_path: Path) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    compressed = {"joblib_zlib", "joblib_gzip", "joblib_bz2", "joblib_xz", "joblib_lzma",
                  "torch_zip_deflated", "numpy_npzfile_allow_pickle"}  # the last: computed bytes
    assert len(TECHNIQUES) >= 60
    for name, build in TECHNIQUES.items():
        filename, data = build(marker)
        assert filename and "/" not in filename, name
        assert data == build(marker)[1], f"{name} is not reproducible"
        if name not in compressed:  # every payload aims at the marker, and only at it
            assert str(marker).encode() in data, name


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_every_technique_is_caught(name: str, tmp_path: Path, marker: Path) -> None:
    findings = scan_technique(name, tmp_path, marker)
    assert any(f.severity >= Severity.HIGH for f in findings), findings
    if name in EXTENSION_TECHNIQUES:
        assert any(f.rule_id == UNRESOLVED and f.severity is Severity.CRITICAL for f in findings)
    else:
        expected = EXPECTED_GADGET.get(name, "os.system")
        found = gadgets(findings)
        assert expected in found, sorted(found)
        assert found[expected].severity is Severity.CRITICAL
        assert found[expected].evidence["reason"]
    assert not marker.exists()


@pytest.mark.parametrize("name", sorted(n for n in TECHNIQUES if n.startswith("memo_")))
def test_memo_sourced_stack_global_resolves_the_stored_names(
    name: str, tmp_path: Path, marker: Path
) -> None:
    findings = scan_technique(name, tmp_path, marker)
    found = gadgets(findings)
    assert set(found) == {"os.system"}
    assert found["os.system"].evidence["uses"] == ["called"]
    assert not [f for f in findings if f.rule_id == UNRESOLVED]
    assert not any("builtins" in f.title for f in findings)  # the overwritten memo slot


@contextlib.contextmanager
def registered_extension(code: int) -> Iterator[None]:
    """Register an EXT code as a loading process might; leave nothing behind."""
    before = dict(copyreg._extension_registry)
    copyreg.add_extension(*EXTENSION_TARGET, code)
    try:
        yield
    finally:
        copyreg.remove_extension(*EXTENSION_TARGET, code)
    assert copyreg._extension_registry == before


@pytest.mark.parametrize("name", sorted(EXTENSION_CODES))
def test_registered_extension_code_resolves_like_the_loader(
    name: str, tmp_path: Path, marker: Path
) -> None:
    with registered_extension(EXTENSION_CODES[name]):
        findings = scan_technique(name, tmp_path, marker)
    found = gadgets(findings)
    assert found["os.system"].severity is Severity.CRITICAL
    assert found["os.system"].evidence["uses"] == ["called"]
    assert not [f for f in findings if f.rule_id == UNRESOLVED]


def test_unregistered_extension_code_is_unresolvable(tmp_path: Path, marker: Path) -> None:
    assert UNREGISTERED_EXTENSION not in copyreg._inverted_registry
    findings = scan_technique("ext_unregistered", tmp_path, marker)
    unresolved = [f for f in findings if f.rule_id == UNRESOLVED]
    assert len(unresolved) == 1
    assert str(UNREGISTERED_EXTENSION) in unresolved[0].evidence["reason"]


@pytest.mark.parametrize("name", ["payload_then_invalid_opcode", "payload_then_truncated_string"])
def test_payload_before_a_break_is_reported_with_the_break(
    name: str, tmp_path: Path, marker: Path
) -> None:
    findings = scan_technique(name, tmp_path, marker)
    assert gadgets(findings)["os.system"].severity is Severity.CRITICAL
    broken = [f for f in findings if f.rule_id == "BST-SCAN-PKL-004"]
    assert broken and broken[0].evidence["opcodes_before_break"] >= 5


def test_payload_in_the_second_pickle_is_found_after_the_first(
    tmp_path: Path, marker: Path
) -> None:
    _, data = TECHNIQUES["payload_in_second_pickle"](marker)
    stream = io.BytesIO(data)
    for _ in pickletools.genops(stream):
        pass
    first_end = stream.tell()
    findings = scan_technique("payload_in_second_pickle", tmp_path, marker)
    assert gadgets(findings)["os.system"].location.offset >= first_end
    only_first = tmp_path / "first.pkl"
    only_first.write_bytes(data[:first_end])
    assert bastion.scan(only_first).findings == []


def test_nested_payload_is_scanned_and_located_inside_its_loader(
    tmp_path: Path, marker: Path
) -> None:
    findings = scan_technique("nested_pickle_loads_twice", tmp_path, marker)
    inner = gadgets(findings)["os.system"]
    assert inner.location.member.count("pickle.loads@") == 2
    assert [f.rule_id for f in findings].count("BST-SCAN-PKL-005") == 2


def test_torch_zip_pickle_under_an_innocent_name_is_found(tmp_path: Path, marker: Path) -> None:
    findings = scan_technique("torch_zip_hidden_unreferenced_member", tmp_path, marker)
    assert gadgets(findings)["os.system"].location.member == "archive/data/7"
    assert not [f for f in findings if f.location.member == "archive/data.pkl"]


def test_torch_zip_read_by_central_directory_name(tmp_path: Path, marker: Path) -> None:
    findings = scan_technique("torch_zip_local_name_mismatch", tmp_path, marker)
    assert gadgets(findings)["os.system"].location.member == "archive/data.pkl"
    mismatch = [f for f in findings if f.rule_id == "BST-SCAN-ZIP-001"]
    assert mismatch[0].evidence == {"central": "archive/data.pkl", "local": "archive/data/000"}


@pytest.mark.parametrize(
    ("name", "member"),
    [
        ("torch_zip_two_central_directories", "archive/data.pkl"),  # the directory torch reads
        ("torch_zip_uppercase_data_pkl", "archive/DATA.PKL"),
    ],
)
def test_torch_zip_read_as_torch_reads_it(
    name: str, member: str, tmp_path: Path, marker: Path
) -> None:
    found = gadgets(scan_technique(name, tmp_path, marker))
    assert found["os.system"].location.member == member


@pytest.mark.parametrize(
    "name", ["torch_legacy_payload_in_object", "torch_legacy_payload_in_storage_keys"]
)
def test_legacy_torch_checkpoint_pickles_are_all_checked(
    name: str, tmp_path: Path, marker: Path
) -> None:
    filename, data = TECHNIQUES[name](marker)
    (tmp_path / filename).write_bytes(data)
    report = bastion.scan(tmp_path / filename).files[0]
    assert "torch-legacy" in report.formats
    assert gadgets(report.findings)["os.system"].severity is Severity.CRITICAL


# -- pickle_policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name", "qualified"),
    [
        ("__builtin__", "eval", "builtins.eval"),
        ("__builtin__", "unicode", "builtins.str"),
        ("copy_reg", "_reconstructor", "copyreg._reconstructor"),
        ("cPickle", "loads", "pickle.loads"),
        ("UserDict", "UserDict", "collections.UserDict"),
        ("exceptions", "Exception", "builtins.Exception"),
        ("torch", "serialization.os.system", "torch.serialization.os.system"),
        ("torch._utils", "os.system", "torch._utils.os.system"),
        ("os", "system", "os.system"),
    ],
)
def test_normalise_maps_python2_and_dotted_names(module: str, name: str, qualified: str) -> None:
    assert normalise(module, name) == qualified


@pytest.mark.parametrize(
    "qualified",
    [
        "os.system",
        "posix.system",
        "nt.system",
        "os.path.join",  # a submodule of a denied module
        "subprocess.Popen",
        "builtins.eval",
        "builtins.getattr",
        "builtins.__import__",
        "importlib.util.spec_from_file_location",
        "importlib.machinery.SourceFileLoader",
        "torch._utils.os.system",
        "torch.serialization.os.system",
        "sklearn.utils.os.system",
        "uuid.os.system",
        "pickle.loads",
        "numpy.load",
        "marshal.loads",
        "types.FunctionType",
        "functools.partial",
        "operator.attrgetter",
        "pydoc.locate",
        "runpy._run_code",
        "pip._internal.cli.main.main",
        "socket.create_connection",
        "torch.hub.load",
        "torch.utils.tensorboard.SummaryWriter",
        "torch.distributed.TCPStore",
        "joblib.Memory",
        "pandas.HDFStore",
        "torch.fx.graph_module.reduce_graph_module",
        "numpy.ctypeslib.load_library",
        "uuid.UUID.__init__.__globals__",  # a dunder path from an allowlisted class
        "builtins.object.__getattribute__",
    ],
)
def test_gadgets_and_paths_through_them_are_dangerous(qualified: str) -> None:
    verdict = classify(qualified)
    assert verdict.kind is Kind.DANGEROUS
    assert verdict.reason


def test_python2_names_are_classified_after_normalising() -> None:
    assert classify(normalise("__builtin__", "eval")).kind is Kind.DANGEROUS
    assert classify(normalise("copy_reg", "_reconstructor")).kind is Kind.SAFE
    assert classify(normalise("cPickle", "loads")).kind is Kind.DANGEROUS


# Python 2 names are mapped by the loader only below protocol 3: from PROTO 3 on,
# `UserDict.OrderedDict` imports a module named UserDict (one planted beside the model, say),
# so it must not pass as collections.OrderedDict. Below 3 the mapping is what loads.
@pytest.mark.parametrize(
    ("data", "flagged"),
    [
        (b"\x80\x04cUserDict\nOrderedDict\n)R.", True),
        (b"\x80\x04\x8c\x08UserDict\x8c\x0bOrderedDict\x93)R.", True),
        (b"\x80\x03ccopy_reg\n_reconstructor\ncbuiltins\nobject\ncbuiltins\nobject\nN\x87R.",
         True),
        (b"\x80\x05c__builtin__\nset\n)R.", True),
        (b"\x80\x02c__builtin__\nset\n)R.", False),
        (b"cUserDict\nOrderedDict\n)R.", False),  # no PROTO: protocol 0, mapped
        (b"\x80\x02ccopy_reg\n_reconstructor\ncbuiltins\nobject\ncbuiltins\nobject\nN\x87R.",
         False),
    ],
)
def test_python2_names_are_mapped_only_below_protocol_3(
    data: bytes, flagged: bool, tmp_path: Path
) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(data)
    blocking = [f for f in bastion.scan(path).findings if f.severity >= Severity.HIGH]
    assert bool(blocking) is flagged, blocking


def test_a_py2_alias_at_protocol_4_names_the_module_a_load_imports(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x04c__builtin__\neval\n)R.")
    [finding] = [f for f in bastion.scan(path).findings if f.severity >= Severity.HIGH]
    assert "__builtin__.eval" in finding.title + str(finding.evidence)


@pytest.mark.parametrize(
    ("qualified", "kind"),
    [
        ("collections.OrderedDict", Kind.SAFE),
        ("torch._utils._rebuild_tensor_v2", Kind.SAFE),
        ("torch.FloatStorage", Kind.SAFE),
        ("numpy.core.multiarray._reconstruct", Kind.SAFE),
        ("numpy.float64", Kind.SAFE),
        ("copyreg._reconstructor", Kind.SAFE),
        ("sklearn.linear_model._logistic.LogisticRegression", Kind.TRUSTED),
        ("torch.nn.modules.linear.Linear", Kind.TRUSTED),
        ("sklearn.utils.check_array", Kind.UNKNOWN),  # a function, not a reconstructor
        ("mypackage.Model", Kind.UNKNOWN),
        ("builtins.print", Kind.UNKNOWN),
        ("torch.cosine_similarity", Kind.UNKNOWN),  # 'cos' is not 'os'
    ],
)
def test_allowlist_trusted_and_unknown(qualified: str, kind: Kind) -> None:
    assert classify(qualified).kind is kind


def test_trusted_modules_never_trust_a_gadget_path() -> None:
    trusted = frozenset({"mypackage"})
    assert classify("mypackage.Model", trusted).kind is Kind.TRUSTED
    assert classify("mypackage.os.system", trusted).kind is Kind.DANGEROUS


# -- pickle_machine ---------------------------------------------------------------------------


def analyse(data: bytes, limits: Limits | None = None) -> list[Finding]:
    ctx = ScanContext(limits or Limits(), dispatch)
    findings: list[Finding] = []
    for machine, _ in analyse_pickles(io.BytesIO(data), Location("test.pkl"), ctx):
        findings.extend(machine.verdicts())
    return findings


@pytest.mark.parametrize(
    ("data", "value"),
    [
        (b"I0x10\n.", 16),  # C strtol and Python int(text, 0) read any base prefix
        (b"I010\n.", 8),  # strtol's octal
        (b"I5\x00junk\n.", 5),  # C stops at a NUL byte
        (b"L0x10L\n.", 16),
        (b"F1.5\x00junk\n.", 1.5),
        (b"I7\np0\x00junk\n0g0\n.", 7),
        (b"S'\xc3\xa9'\n.", "\u00c3\u00a9"),  # torch decodes UTF-8: every byte is kept
    ],
)
def test_text_arguments_are_read_as_the_loader_reads_them(data: bytes, value: object) -> None:
    ctx = ScanContext(Limits(), dispatch)
    [(_, loaded)] = analyse_pickles(io.BytesIO(data), Location("test.pkl"), ctx)
    assert loaded == value


@pytest.mark.parametrize("data", [b"I0x\n.", b"Inope\n.", b"S'unquoted\n."])
def test_text_arguments_the_loader_rejects_break_the_stream(data: bytes) -> None:
    assert [f.rule_id for f in analyse(data)] == ["BST-SCAN-PKL-004"]


def uses_of(findings: list[Finding], qualified: str) -> list[str]:
    return next(f.evidence["uses"] for f in findings if f.evidence.get("global") == qualified)


CLASS = global_ref("mypkg", "Model")


@pytest.mark.parametrize(
    ("body", "uses"),
    [
        (CLASS, ["referenced"]),
        (call(CLASS), ["called"]),
        (CLASS + tuple_of() + NEWOBJ, ["instantiated"]),
        (MARK + INST + b"mypkg\nModel\n", ["instantiated"]),
        (MARK + CLASS + literal(1) + OBJ, ["instantiated"]),
        (CLASS + tuple_of() + NEWOBJ + EMPTY_DICT + BUILD, ["given state", "instantiated"]),
        (call(CLASS) + literal({"w": 1}) + BUILD, ["called", "given state"]),
        (call(global_ref("builtins", "list"), CLASS), ["passed as an argument"]),
        (
            call(global_ref("copy_reg", "_reconstructor"), CLASS, global_ref("builtins", "object"),
                 literal(None)) + EMPTY_DICT + BUILD,
            ["given state", "instantiated", "passed as an argument"],
        ),
    ],
    ids=["referenced", "called", "newobj", "inst", "obj", "newobj+build", "reduce+build",
         "argument", "copyreg-reconstructor"],
)
def test_machine_records_how_each_global_is_used(body: bytes, uses: list[str]) -> None:
    findings = analyse(pickle_of(body))
    assert uses_of(findings, "mypkg.Model") == uses


def _billion_laughs(levels: int, width: int) -> bytes:
    """Each level is a list of `width` references to the level below, fetched from the memo."""
    body = literal([1] * width) + BINPUT + b"\x00"
    for level in range(1, levels):
        body += MARK + (BINGET + bytes([level - 1])) * width + LIST + BINPUT + bytes([level])
    return pickle_of(body)


def test_expansion_bomb_is_reported_without_expanding() -> None:
    data = _billion_laughs(levels=9, width=10)  # 10**9 elements in a few hundred bytes
    started = time.perf_counter()
    findings = analyse(data)
    assert time.perf_counter() - started < 1
    assert [f.rule_id for f in findings] == ["BST-SCAN-PKL-007"]
    assert analyse(_billion_laughs(levels=3, width=10)) == []


def test_deeply_nested_lists_give_a_finding_not_a_recursion_error() -> None:
    depth = 100_000
    data = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    findings = analyse(data)
    assert [f.rule_id for f in findings] == ["BST-SCAN-PKL-008"]
    assert findings[0].evidence["depth"] == depth
    shallow = b"\x80\x02" + b"]" * 50 + b"a" * 49 + b"."
    assert analyse(shallow) == []



# STACK_GLOBAL whose module is: the result of calling an unknown function (any string at load
# time), an int, or an instance of a trusted class (the loader stops: "requires str").
_STACK_GLOBAL_OPERANDS = {
    "unknown_call": b"\x80\x04\x8c\x0bmarker_only\x8c\x04call\x93)R\x8c\x06system\x93.",
    "int_literal": b"\x80\x04K\x07\x8c\x06system\x93.",
    "trusted_instance": b"\x80\x04\x8c\x1esklearn.linear_model._logistic"
    b"\x8c\x12LogisticRegression\x93)\x81\x8c\x06system\x93.",
}


@pytest.mark.parametrize(("name", "unresolved"), [
    ("unknown_call", True), ("int_literal", False), ("trusted_instance", False),
])
def test_stack_global_operand_that_could_be_a_string_is_unresolved(
    name: str, unresolved: bool, tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(_STACK_GLOBAL_OPERANDS[name])
    rules_found = {f.rule_id for f in bastion.scan(path).files[0].findings}
    assert (UNRESOLVED in rules_found) is unresolved, rules_found
