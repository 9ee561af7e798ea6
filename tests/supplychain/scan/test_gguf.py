"""GGUF: metadata bounds and tensor consistency, and chat templates checked for template
injection by parsing only. Files are written by a small GGUF writer in this module."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from bastion.findings import Location, Severity
from bastion.supplychain.scan import chat_template, scan_file
from bastion.supplychain.scan.context import Limits, ScanContext
from bastion.supplychain.scan.detect import dispatch
from bastion.supplychain.scan.formats import gguf

INJECTION, MALFORMED, TENSORS, UNPARSEABLE = (
    "BST-SCAN-GGUF-001", "BST-SCAN-GGUF-002", "BST-SCAN-GGUF-003", "BST-SCAN-GGUF-004"
)
U8, I32, U32, F32, BOOL, STRING, ARRAY, U64 = 0, 5, 4, 6, 7, 8, 9, 10
F32_TYPE, Q4_0_TYPE = 0, 2

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
TOOLS = (
    "{%- set ns = namespace(found=false, last=messages|length - 1) %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}"
    "{%- for message in messages[::-1] %}{%- if message.role == 'user' %}"
    "{%- set ns.found = true %}{%- endif %}{%- endfor %}"
    "{%- if tools %}{{- '<tools>' }}{%- for tool in tools %}{{- tool | tojson }}"
    "{%- endfor %}{{- tools|map(attribute='function')|map(attribute='name')|join(', ') }}"
    "{%- endif %}{%- for message in messages %}{%- if loop.first %}{% continue %}{%- endif %}"
    "{%- for call in message.tool_calls or [] %}"
    "{{- '<tool_call>' ~ call.function.name ~ '(' }}"
    "{%- for name, value in call.function.arguments | items %}"
    "{{- name ~ '=' ~ value | tojson }}{%- endfor %}{{- ')' }}{%- endfor %}"
    "{% generation %}{{ message.content }}{% endgeneration %}{%- endfor %}"
)


def text(value: str | bytes, order: str = "<") -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return struct.pack(order + "Q", len(raw)) + raw


@dataclass
class Writer:
    """Builds GGUF files field by field; deliberately allows invalid ones."""

    order: str = "<"
    version: int = 3
    pairs: list[bytes] = field(default_factory=list)
    infos: list[bytes] = field(default_factory=list)
    data: bytes = b""
    kv_count: int | None = None
    tensor_count: int | None = None
    alignment: int = 32

    def pack(self, fmt: str, *values) -> bytes:
        return struct.pack(self.order + fmt, *values)

    def kv(self, key: str, value_type: int, payload: bytes) -> Writer:
        self.pairs.append(text(key, self.order) + self.pack("I", value_type) + payload)
        return self

    def string(self, key: str, value: str) -> Writer:
        return self.kv(key, STRING, text(value, self.order))

    def u32(self, key: str, value: int) -> Writer:
        return self.kv(key, U32, self.pack("I", value))

    def array(self, key: str, item_type: int, items: bytes, count: int) -> Writer:
        return self.kv(key, ARRAY, self.pack("IQ", item_type, count) + items)

    def tensor(self, name: str, dims: list[int], ggml_type: int, offset: int) -> Writer:
        info = text(name, self.order) + self.pack("I", len(dims))
        info += b"".join(self.pack("Q", d) for d in dims) + self.pack("IQ", ggml_type, offset)
        self.infos.append(info)
        return self

    def build(self) -> bytes:
        kv_count = len(self.pairs) if self.kv_count is None else self.kv_count
        tensor_count = len(self.infos) if self.tensor_count is None else self.tensor_count
        out = b"GGUF" + self.pack("IQQ", self.version, tensor_count, kv_count)
        out += b"".join(self.pairs) + b"".join(self.infos)
        if self.data:
            out += b"\0" * (-len(out) % self.alignment) + self.data
        return out


def model(template: str | None = CHATML, order: str = "<") -> Writer:
    """A small, valid model: vocabulary arrays, a template, an F32 and a Q4_0 tensor."""
    writer = Writer(order=order)
    tokens = [b"<s>", b"</s>", b"hello", b"world"]
    writer.string("general.architecture", "llama").u32("general.alignment", 32)
    writer.array("tokenizer.ggml.tokens", STRING, b"".join(text(t, order) for t in tokens), 4)
    writer.array("tokenizer.ggml.scores", F32, writer.pack("4f", 0, 0, -1, -2), 4)
    writer.array("tokenizer.ggml.token_type", I32, writer.pack("4i", 3, 3, 1, 1), 4)
    writer.kv("tokenizer.ggml.add_bos_token", BOOL, b"\1")
    writer.array("general.tags", ARRAY, writer.pack("IQ", U8, 2) + b"\1\2", 1)
    if template is not None:
        writer.string("tokenizer.chat_template", template)
    writer.tensor("token_embd.weight", [8, 4], F32_TYPE, 0)  # 128 bytes
    writer.tensor("blk.0.attn_q.weight", [32, 2], Q4_0_TYPE, 128)  # 2 blocks of 18 bytes
    writer.data = b"\0" * (128 + 36)
    return writer


def scan_bytes(data: bytes):
    return gguf.scan_gguf(io.BytesIO(data), Location("model.gguf"), ScanContext(Limits(), dispatch))


def rule_ids(findings) -> set[str]:
    return {f.rule_id for f in findings}


def write(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- benign -------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [CHATML, LLAMA2, TOOLS, None])
def test_benign_model_is_clean(tmp_path, template):
    report = scan_file(write(tmp_path, model(template).build()))
    assert report.findings == []
    assert report.formats == ["gguf"]


def test_big_endian_model_is_read():
    assert scan_bytes(model(LLAMA2, order=">").build()) == []


def test_version_2_is_supported():
    writer = model()
    writer.version = 2
    assert scan_bytes(writer.build()) == []


# --- chat template injection ----------------------------------------------------------------

CRITICAL_TEMPLATES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}",
    "{{ joiner.__init__.__globals__['os'].system('touch {marker}') }}",
    "{{ namespace.__init__.__globals__.__builtins__.__import__('os').system('touch {marker}') }}",
    "{{ lipsum.__globals__['os'].popen('touch {marker}') }}",
    "{% for m in messages %}{{ m|attr('__class__') }}{% endfor %}",
    "{{ messages[('_' * 2) ~ 'class' ~ ('_' * 2)] }}",
    "{{ messages[['__cla', 'ss__']|join] }}",
    "{{ messages['__CLASS__'|lower] }}",
    "{{ messages|map(attribute='__class__')|list }}",
    "{{ messages|map('attr', '__globals__')|list }}",
    "{{ messages|selectattr('__class__.__base__')|list }}",
    "{{ self._TemplateReference__context.cycler.__init__ }}",
    "{{ x.mro() }}",
    "{% set s = ('__cla' + 'ss__') %}{{ s }}",
]
HIGH_TEMPLATES = [
    "{{ messages|attr(name) }}",
    "{% set u = '_' * 2 %}{{ messages[u ~ 'globals' ~ u] }}",
    "{{ (lipsum|string|list)[18] }}",
    "{{ '%c%c' % (95, 95) }}",
    "{{ '{0:c}'.format(95) }}",
    "{{ request.application }}",
    "{{ config.items() }}",
    "{{ messages._private }}",
    "{% include 'other.jinja' %}",
    "{% import 'macros.jinja' as m %}",
    "{{ 'see __init__ here' }}",
    "{{ messages['_' ~ role] }}",
]


@pytest.mark.parametrize("template", CRITICAL_TEMPLATES)
def test_injection_is_critical(tmp_path, template):
    marker = tmp_path / "marker"
    data = model(template.replace("{marker}", str(marker))).build()
    findings = scan_file(write(tmp_path, data)).findings
    assert rule_ids(findings) == {INJECTION}
    assert findings[0].severity is Severity.CRITICAL
    assert findings[0].evidence["key"] == "tokenizer.chat_template"
    assert findings[0].evidence["constructs"][0]["severity"] == "critical"
    assert not marker.exists()


@pytest.mark.parametrize("template", HIGH_TEMPLATES)
def test_suspicious_construct_is_high(template):
    findings = scan_bytes(model(template).build())
    assert rule_ids(findings) == {INJECTION}
    assert findings[0].severity is Severity.HIGH


def test_construct_reports_its_line():
    findings = scan_bytes(model("{{ 'a' }}\n\n{{ x.__class__ }}").build())
    assert findings[0].evidence["constructs"][0]["line"] == 3


@pytest.mark.parametrize(
    "key", ["tokenizer.chat_template.tool_use", "tokenizer.rag.chat_template", "chat_template"]
)
def test_every_chat_template_key_is_checked(key):
    writer = model().string(key, "{{ cycler.__init__.__globals__ }}")
    findings = scan_bytes(writer.build())
    assert [f.evidence["key"] for f in findings] == [key]


def test_unparseable_template_cannot_be_checked():
    findings = scan_bytes(model("{% for m in messages %}{{ m }").build())
    assert rule_ids(findings) == {UNPARSEABLE}
    assert findings[0].severity is Severity.HIGH


def test_deeply_nested_template_is_a_finding():
    findings = scan_bytes(model("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}").build())
    assert rule_ids(findings) <= {UNPARSEABLE, INJECTION} and findings


def test_template_is_never_rendered(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a template was rendered")

    monkeypatch.setattr("jinja2.Template.render", refuse)
    monkeypatch.setattr("jinja2.Environment.from_string", refuse)
    monkeypatch.setattr("jinja2.Environment.compile", refuse)
    assert chat_template.check(CHATML) == []
    assert chat_template.check("{{ cycler.__init__.__globals__ }}")


def test_template_before_a_break_is_still_checked():
    data = model("{{ lipsum.__globals__ }}").build()
    findings = scan_bytes(data[: len(data) - 200])
    assert {INJECTION, MALFORMED} <= rule_ids(findings)


# --- malformed structure ------------------------------------------------------------------


def malformed(data: bytes) -> str:
    findings = scan_bytes(data)
    assert MALFORMED in rule_ids(findings), findings
    finding = next(f for f in findings if f.rule_id == MALFORMED)
    assert finding.severity is Severity.HIGH
    return finding.title


@pytest.mark.parametrize("version", [1, 4, 0xFFFFFFFF])
def test_unsupported_version(version):
    writer = model()
    writer.version = version
    assert "unsupported GGUF version" in malformed(writer.build())


def test_huge_metadata_count():
    writer = model()
    writer.kv_count = 1 << 60
    assert "metadata pairs" in malformed(writer.build())


def test_huge_tensor_count():
    writer = model()
    writer.tensor_count = 1 << 62
    assert "tensors, more than the file holds" in malformed(writer.build())


def test_string_longer_than_file():
    writer = Writer().kv("general.name", STRING, struct.pack("<Q", 1 << 63) + b"abc")
    assert "declares" in malformed(writer.build())


def test_array_longer_than_file():
    writer = Writer().array("tokenizer.ggml.scores", F32, b"\0" * 8, 1 << 61)
    assert "needs" in malformed(writer.build())


def test_string_array_count_longer_than_file():
    writer = Writer().array("tokenizer.ggml.tokens", STRING, text("a"), 1 << 40)
    assert "items, more than the file holds" in malformed(writer.build())


def test_string_in_array_longer_than_file():
    items = text("fine") + struct.pack("<Q", 1 << 40) + b"tail" + b"\0" * 16
    writer = Writer().array("tokenizer.ggml.tokens", STRING, items, 3)
    assert "more than remain" in malformed(writer.build())


def test_arrays_nested_too_deeply():
    nested = struct.pack("<IQ", U8, 0)
    for _ in range(gguf.MAX_ARRAY_DEPTH + 1):
        nested = struct.pack("<IQ", ARRAY, 1) + nested
    writer = Writer().kv("deep", ARRAY, nested)
    assert "nests arrays deeper" in malformed(writer.build())


@pytest.mark.parametrize("value_type", [13, 99, 0xFFFFFFFF])
def test_unknown_value_type(value_type):
    writer = Writer().kv("general.odd", value_type, b"\0" * 8)
    assert "unknown value type" in malformed(writer.build())


def test_unknown_array_item_type():
    writer = Writer().array("general.odd", 77, b"", 1)
    assert "unknown item type" in malformed(writer.build())


def test_huge_key():
    writer = Writer()
    writer.pairs.append(struct.pack("<Q", gguf.MAX_KEY_BYTES + 1) + b"k" * (gguf.MAX_KEY_BYTES + 1))
    assert "metadata key of" in malformed(writer.build())


@pytest.mark.parametrize("alignment", [0, 3, 48])
def test_alignment_must_be_a_power_of_two(alignment):
    writer = Writer().u32("general.alignment", alignment)
    assert "power of two" in malformed(writer.build())


def test_alignment_of_wrong_type():
    writer = Writer().kv("general.alignment", U64, struct.pack("<Q", 32))
    assert "inconsistent" in malformed(writer.build())


def test_duplicate_key():
    writer = model().string("general.architecture", "gpt2")
    assert "inconsistent" in malformed(writer.build())


def test_too_many_dimensions():
    writer = Writer().tensor("t", [1, 1, 1, 1, 1], F32_TYPE, 0)
    writer.data = b"\0" * 4
    assert "dimensions" in malformed(writer.build())


def test_item_limit_is_a_finding(monkeypatch):
    monkeypatch.setattr(gguf, "MAX_ITEMS", 3)
    findings = dispatch(io.BytesIO(model().build()), Location("m.gguf"),
                        ScanContext(Limits(), dispatch))
    assert rule_ids(findings) == {"BST-SCAN-LIMIT-001"}


# --- tensors ------------------------------------------------------------------------------


def tensor_problems(writer: Writer) -> list[str]:
    findings = scan_bytes(writer.build())
    assert rule_ids(findings) == {TENSORS}, findings
    return findings[0].evidence["problems"]


def test_tensor_past_end_of_file():
    writer = model()
    writer.data = writer.data[:100]
    assert any("past the" in p for p in tensor_problems(writer))


def test_overlapping_tensors():
    writer = Writer().tensor("a", [8], F32_TYPE, 0).tensor("b", [8], F32_TYPE, 0)
    writer.data = b"\0" * 32
    assert any("overlaps" in p for p in tensor_problems(writer))


def test_misaligned_tensor():
    writer = Writer().tensor("a", [2], F32_TYPE, 4)
    writer.data = b"\0" * 12
    assert any("not aligned" in p for p in tensor_problems(writer))


def test_row_not_in_whole_blocks():
    writer = Writer().tensor("q", [20], Q4_0_TYPE, 0)
    writer.data = b"\0" * 18
    assert any("whole 32-element blocks" in p for p in tensor_problems(writer))


def test_duplicate_tensor_names():
    writer = Writer().tensor("a", [8], F32_TYPE, 0).tensor("a", [8], F32_TYPE, 32)
    writer.data = b"\0" * 64
    assert any("more than once" in p for p in tensor_problems(writer))


def test_unknown_tensor_type_is_low():
    writer = Writer().tensor("a", [8], 200, 0)
    writer.data = b"\0" * 32
    findings = scan_bytes(writer.build())
    assert rule_ids(findings) == {TENSORS}
    assert findings[0].severity is Severity.LOW


def test_data_section_past_end_of_file():
    writer = Writer().tensor("a", [8], F32_TYPE, 0)
    assert "data section starts past the end" in malformed(writer.build())


# --- robustness ---------------------------------------------------------------------------


def test_every_truncation_gives_a_finding():
    data = model(CHATML).build()
    for cut in range(4, len(data)):
        findings = scan_bytes(data[:cut])
        assert rule_ids(findings) & {MALFORMED, TENSORS}, cut


def test_random_mutations_never_raise():
    rng = np.random.default_rng(0)
    base = model(LLAMA2).build()
    for _ in range(300):
        data = bytearray(base)
        for position in rng.integers(4, len(data), size=4):
            data[position] = int(rng.integers(0, 256))
        assert isinstance(scan_bytes(bytes(data)), list)


def test_huge_declared_lengths_are_fast(tmp_path):
    writer = Writer()
    for index in range(50):
        writer.kv(f"k{index}", STRING, struct.pack("<Q", (1 << 63) + index))
    report = scan_file(write(tmp_path, writer.build()))
    assert rule_ids(report.findings) == {MALFORMED}
    assert report.seconds < 1.0
