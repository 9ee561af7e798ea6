"""The fast path (pickle_fast) may only ever say "clean" where the symbolic machine finds
nothing: both run on every malicious technique, on real library pickles, on the shapes of
the bench corpus, on pinned parser-difference and framing cases and on fuzzed mutations."""

from __future__ import annotations

import collections
import copyreg
import datetime
import io
import pickle
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

import bastion
from bastion.demo.malicious import TECHNIQUES, call, global_ref, literal, pickle_of
from bastion.findings import Finding, Location
from bastion.supplychain.scan import pickle_fast
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.formats.pickle_file import scan_pickle_stream

LIMITS = Limits()


@contextmanager
def fast_path_off() -> Iterator[None]:
    with mock.patch.object(pickle_fast, "is_clean", return_value=False):
        yield


def full_path(data: bytes, limits: Limits = LIMITS) -> tuple[list[Finding], list[str]]:
    """The symbolic machine's findings and the formats it added, fast path disabled."""
    ctx = ScanContext(limits, dispatch)
    with fast_path_off():
        findings = scan_pickle_stream(io.BytesIO(data), Location("x.pkl"), ctx)
    return findings, ctx.formats


def assert_never_weaker(data: bytes, limits: Limits = LIMITS) -> bool:
    """Where the fast path says clean, the full path finds nothing; returns the fast answer."""
    clean = pickle_fast.is_clean(data, limits)
    if clean:
        findings, formats = full_path(data, limits)
        assert findings == [], f"fast path said clean, the machine found {findings}"
        assert formats == []
    return clean


def small_pickles(seed: int = 7, count: int = 60) -> list[bytes]:
    """Shapes of the bench corpus's small folder: dicts, lists and arrays, protocols 2-5."""
    rng = np.random.default_rng(seed)
    made = []
    for i in range(count):
        shape = i % 4
        if shape == 0:
            value: object = {"id": i, "score": float(rng.random()), "label": f"item-{i}",
                             "flags": [bool(b) for b in rng.integers(0, 2, 4)]}
        elif shape == 1:
            value = [int(v) for v in rng.integers(0, 1000, 16)]
        elif shape == 2:
            value = {"weights": rng.normal(size=(2, 3)).astype(np.float32),
                     "bias": np.zeros(3), "step": i, "history": (0.5, 0.25)}
        else:
            value = rng.normal(size=4)
        made.append(pickle.dumps(value, protocol=2 + i % 4))
    return made


def real_data_pickles() -> dict[str, bytes]:
    values = {
        "ordered_dict": collections.OrderedDict(a=1, b=[1, 2]),
        "datetime": datetime.datetime(2024, 5, 1, 12, 30),
        "nested": {"a": [{"b": (1, 2.5, None, True)}], "c": {1, 2}, "d": frozenset("xy")},
        "bytes": {"raw": b"\x00\x95\n" * 20, "ba": bytearray(b"abc")},
        "array": np.arange(12, dtype=np.int16).reshape(3, 4),
        "shared": [[1, 2]] * 3,
    }
    return {f"{name}_p{protocol}": pickle.dumps(value, protocol=protocol)
            for name, value in values.items() for protocol in range(6)}


@pytest.mark.parametrize("name", sorted(TECHNIQUES))
def test_no_malicious_technique_is_called_clean(name: str, marker: Path) -> None:
    _, data = TECHNIQUES[name](marker)
    assert not pickle_fast.is_clean(data, LIMITS)
    assert_never_weaker(data)


@pytest.mark.parametrize("name", sorted(real_data_pickles()))
def test_real_data_pickles_agree(name: str) -> None:
    assert_never_weaker(real_data_pickles()[name])


def test_the_fast_path_answers_most_plain_data_pickles() -> None:
    """It must be worth having: plain data in the bench's shapes mostly takes it."""
    corpus = small_pickles() + list(real_data_pickles().values())
    answered = sum(assert_never_weaker(data) for data in corpus)
    assert answered >= 0.8 * len(corpus)


def test_classes_of_trusted_packages_take_the_full_path() -> None:
    x = np.random.default_rng(3).normal(size=(20, 2))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    data = pickle.dumps(model, protocol=4)
    limits = Limits(max_depth=len(data), max_expansion=10**9)  # let its size pass the gates
    assert full_path(data, limits)[0]  # low findings: classes of a trusted package
    assert not assert_never_weaker(data, limits)


def test_a_pickle_hidden_in_a_frame_after_stop_is_not_called_clean(marker: Path) -> None:
    """A FRAME that claims bytes after STOP: the C unpickler skips them, the machine reads
    them as a second pickle (here a payload). The fast path must not say clean."""
    first = pickle.dumps({"a": 1}, protocol=4)  # PROTO, FRAME, body ending in STOP
    hidden = pickle_of(call(global_ref("os", "system"), literal(f"touch {marker}")))
    body = first[11:] + hidden
    data = first[:2] + b"\x95" + struct.pack("<Q", len(body)) + body
    assert full_path(data)[0]
    assert not pickle_fast.is_clean(data, LIMITS)


@pytest.mark.parametrize("trailer", [b"junk", b".", b"\x80\x02N."])
def test_anything_after_stop_takes_the_full_path(trailer: bytes) -> None:
    assert not pickle_fast.is_clean(pickle.dumps([1, 2], protocol=2) + trailer, LIMITS)


@pytest.mark.parametrize("body", [
    b"I0x10\n.",  # INT in hex (strtol): the C unpickler and the machine both accept it
    b"I010\n.",  # octal
    b"L0x10L\n.",
    b"F1.5\x00junk\n.",  # FLOAT up to a NUL
    b"Finf\n.",
    b"N" + b"p0\x00junk\n" + b"0g0\n.",  # memo key up to a NUL
    b"S'\\x41'\n.",  # escaped STRING
    b"Vabc\\u00e9\n.",  # raw-unicode-escape UNICODE
    b"ccollections\nOrderedDict\n)R.",  # GLOBAL of a safe name
    b"c collections\nOrderedDict\n)R.",  # a name the machine splits differently
    b"ccollections \nOrderedDict\n)R.",
    b"c\xc2\xa0collections\nOrderedDict\n)R.",  # non-ASCII space that str.strip removes
    b"cbuiltins\nlist\n)R.",
    b"Pabc\\x\n.",  # PERSID with an escape pickletools refuses
])
def test_text_line_arguments_agree(body: bytes) -> None:
    assert_never_weaker(body)


def test_changing_a_safe_global_is_not_called_clean() -> None:
    data = pickle_of(global_ref("collections", "OrderedDict") + b"}" + b"b")  # BUILD on it
    assert full_path(data)[0]
    assert not pickle_fast.is_clean(data, LIMITS)


def test_registered_extensions_switch_the_fast_path_off() -> None:
    data = b"\x80\x02\x82\x7a)R."  # EXT1 0x7a, then call it
    copyreg.add_extension("collections", "OrderedDict", 0x7A)
    try:
        assert not pickle_fast.is_clean(data, LIMITS)
        assert full_path(data) == ([], [])  # a safe name, so nothing to report
    finally:
        copyreg.remove_extension("collections", "OrderedDict", 0x7A)


def test_expansion_beyond_the_limit_is_not_called_clean() -> None:
    limits = Limits(max_expansion=1_000)
    items = b"K\x01" * 40
    data = b"\x80\x02](" + items + b"eq\x00" + b"(" + b"h\x00" * 40 + b"l."
    assert full_path(data, limits)[0]  # 40 references to a 41-element list
    assert not assert_never_weaker(data, limits)


def test_nesting_beyond_the_limit_is_not_called_clean() -> None:
    limits = Limits(max_depth=30)
    data = b"\x80\x02" + b"]" * 40 + b"a" * 39 + b"."
    assert full_path(data, limits)[0]
    assert not assert_never_weaker(data, limits)


@pytest.mark.parametrize("put", [b"r" + struct.pack("<I", 0xFFFFFFF0), b"p4000000000\n"])
def test_a_huge_memo_index_is_refused_before_the_unpickler_allocates_for_it(put: bytes) -> None:
    data = b"\x80\x02N" + put + b"."
    assert full_path(data) == ([], [])  # harmless to the machine, whose memo is a dict
    assert not pickle_fast.is_clean(data, LIMITS)


def test_a_legacy_torch_magic_number_takes_the_full_path() -> None:
    data = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    assert not pickle_fast.is_clean(data, LIMITS)
    assert full_path(data)[1] == ["torch-legacy"]


def test_nested_loaders_take_the_full_path_even_when_safe() -> None:
    data = pickle_of(call(global_ref("torch.storage", "_load_from_bytes"),
                          literal(pickle.dumps([1]))))
    assert not pickle_fast.is_clean(data, LIMITS)


def test_a_folder_scans_the_same_with_and_without_the_fast_path(tmp_path: Path,
                                                               marker: Path) -> None:
    for index, data in enumerate(small_pickles(count=24) + list(real_data_pickles().values())):
        (tmp_path / f"{index:03}.pkl").write_bytes(data)
    for name in ("int_hex_before_payload", "memo_overwritten_slot", "payload_in_second_pickle"):
        _, data = TECHNIQUES[name](marker)
        (tmp_path / f"{name}.pkl").write_bytes(data)

    def reports() -> list[tuple[str, list[str], list[tuple[str, str]]]]:
        result = bastion.scan(tmp_path, jobs=1)
        return [(r.path, r.formats, sorted((f.rule_id, str(f.location)) for f in r.findings))
                for r in result.files]

    fast = reports()
    with fast_path_off():
        assert reports() == fast


# -- fuzzing: mutated plain-data pickles, with the tokens where parsers differ mixed in --------

SEEDS = [*small_pickles(seed=11, count=8), *real_data_pickles().values()]
TOKENS = [b"I0x10\n", b"F1.5\x00j\n", b"p0\x00x\n", b"g0\n", b"2", b"h\x00", b"0", b"\x95",
          b"\x95" + struct.pack("<Q", 3), b"ccollections\nOrderedDict\n", b"cos\nsystem\n",
          b"\x8c\x02os\x8c\x06system\x93", b"R", b"b", b"(", b"t", b"s", b"u", b"a", b"e", b"."]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        kind = draw(st.sampled_from(["flip", "token", "delete", "truncate"]))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "token":
            data[at:at] = draw(st.sampled_from(TOKENS))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 6))]
        else:
            del data[at + 1 :]
    return bytes(data)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=mutated())
def test_fuzzed_pickles_never_called_clean_where_the_machine_finds_something(data: bytes) -> None:
    assert_never_weaker(data)


PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(value=PLAIN, protocol=st.integers(0, 5), token=st.sampled_from([b"", *TOKENS]),
       at=st.integers(0, 400))
def test_plain_values_with_one_token_agree(value: object, protocol: int, token: bytes,
                                           at: int) -> None:
    data = pickle.dumps(value, protocol=protocol)
    assert_never_weaker(data[:at] + token + data[at:])


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04cUserDict\nOrderedDict\n)R.",  # protocol 4: imports a module named UserDict
        b"\x80\x02c__builtin__\nset\n)R.",  # protocol 2: builtins.set, but the C unpickler
        # does not show find_class the protocol, so the fast path leaves py2 names alone
    ],
)
def test_python2_aliases_take_the_full_path(data: bytes) -> None:
    assert not pickle_fast.is_clean(data, LIMITS)
