"""Keras model configurations: `config.json` in a Keras v3 `.keras` archive, and the
`model_config` / `training_config` JSON attributes of a legacy Keras 2 `.h5` file.

A configuration runs code on load in three ways. A Lambda layer (or any serialised Python
lambda) carries marshalled bytecode that Keras rebuilds into a function: in Keras 3 a
`{"class_name": "__lambda__", "config": {"code": ...}}` object (`"value"` instead of `"code"`
outside Lambda layers), in Keras 2 a `"function"` list whose first item is base64 bytecode
with `"function_type": "lambda"`. A `"module"` naming anything outside Keras makes Keras
import that module and take an attribute from it by name (`os` + `system`). A
`"registered_name"` refers to a custom object that only the user's own code defines.
Nothing is decoded or imported here: the JSON is only read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bastion.findings import Finding, Location, Severity
from bastion.supplychain.scan import pickle_policy, rules

# Keras packages: Keras itself, the Keras-team libraries, TF-Keras and TensorFlow's alias.
_KERAS_MODULE = re.compile(r"(keras|keras_\w+|tf_keras|tensorflow\.keras)(\..+)?")
_KERAS_PACKAGE = re.compile(r"keras|keras_\w+|tf_keras")
# Functions inside Keras itself that undo its protections or fetch and load other files.
_KERAS_GADGETS = {
    "enable_unsafe_deserialization": "turns off Keras safe mode for the rest of the load",
    "get_file": "downloads a file from a URL named in the config",
    "load_model": "loads another model file named in the config",
    "func_load": "rebuilds a function from marshalled bytecode",
    "set_global_attribute": "rewrites Keras global state such as safe mode",
}
_MIN_NAME = 3  # shortest printable run quoted from bytecode as a likely name
_LISTED = 10
_QUOTED = 300  # characters of a name from the file quoted in a finding


@dataclass(frozen=True)
class _Hit:
    rule: rules.Rule
    severity: Severity
    key: str  # what makes two hits the same finding
    title: str
    evidence: dict[str, Any]


def _walk(config: Any) -> Iterator[tuple[dict[str, Any], str]]:
    """Every JSON object in the config with its path, iteratively (configs nest deeply)."""
    stack: list[tuple[Any, str]] = [(config, "$")] if isinstance(config, (dict, list)) else []
    while stack:
        value, path = stack.pop()
        # Scalars cannot hold objects; skipping them keeps large numeric lists cheap.
        if isinstance(value, dict):
            yield value, path
            stack.extend((child, f"{path}.{key}") for key, child in value.items()
                         if isinstance(child, (dict, list)))
        else:
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(value)
                         if isinstance(child, (dict, list)))


def _bytecode_names(code: Any) -> list[str]:
    """Printable runs in the decoded bytecode (names the function uses, such as `system`),
    quoted as evidence. The bytes are never unmarshalled."""
    if not isinstance(code, str):
        return []
    try:
        raw = base64.b64decode("".join(code.split()), validate=True)
    except (binascii.Error, ValueError):
        raw = code.encode("latin-1", "replace")  # Keras 1 wrote the bytes escaped, not base64
    runs = re.findall(rb"[A-Za-z_][A-Za-z0-9_.]{%d,}" % (_MIN_NAME - 1), raw)
    return list(dict.fromkeys(run.decode("ascii") for run in runs))[:_LISTED]


def _lambda_hit(code: Any, path: str, how: str) -> _Hit:
    return _Hit(
        LAMBDA, Severity.CRITICAL, f"lambda:{path}", f"Keras config carries {how} with Python "
        "bytecode that runs on load", {"path": path, "names_in_bytecode": _bytecode_names(code)}
    )


def _lambda_hits(obj: dict[str, Any], path: str) -> Iterator[_Hit]:
    """Serialised lambdas: the Keras 3 `__lambda__` object and Keras 2 Lambda layer fields."""
    if obj.get("class_name") == "__lambda__":
        inner = obj.get("config")
        inner = inner if isinstance(inner, dict) else {}
        code = inner.get("code", inner.get("value"))
        if isinstance(code, list):
            code = code[0] if code else None
        yield _lambda_hit(code, path, "a serialised lambda")
    for key, value in obj.items():
        if key.endswith("_type") and value == "lambda":
            field = key.removesuffix("_type")
            code = obj.get(field)
            code = code[0] if isinstance(code, list) and code else code
            yield _lambda_hit(code, f"{path}.{field}", "a Lambda layer")
    function = obj.get("function")
    if (
        "function_type" not in obj
        and isinstance(function, list)
        and function
        and isinstance(function[0], str)
    ):
        yield _lambda_hit(function[0], f"{path}.function", "a Lambda layer")


def _keras2_field(obj: dict[str, Any], module_key: str) -> str | None:
    """For Keras 2 Lambda fields (`function`, `output_shape`) the field a module key belongs
    to: `module` goes with `function`, `output_shape_module` with `output_shape`."""
    field = "function" if module_key == "module" else module_key.removesuffix("_module")
    return field if f"{field}_type" in obj else None


def _referenced_name(obj: dict[str, Any]) -> str | None:
    """The attribute Keras takes from the module: the class name, or a function's name."""
    class_name = obj.get("class_name")
    if class_name == "function":
        named = obj.get("config")
        if not isinstance(named, str):
            named = obj.get("registered_name")
        return named if isinstance(named, str) else None
    if class_name == "__typespec__":
        spec = obj.get("spec_name")
        return spec if isinstance(spec, str) else None
    return class_name if isinstance(class_name, str) else None


def _module_hits(obj: dict[str, Any], path: str) -> Iterator[_Hit]:
    for key, module in obj.items():
        if not (key == "module" or key.endswith("_module")) or not isinstance(module, str):
            continue
        field = _keras2_field(obj, key)
        if field is None:
            name = _referenced_name(obj)
        elif obj[f"{field}_type"] == "function":
            # Keras 2 looks the function up by name among the module's attributes.
            named = obj.get(field)
            name = named if isinstance(named, str) else None
        else:
            continue  # a lambda (reported as bytecode) or a raw value: the module is unused
        hit = _module_hit(module, name, f"{path}.{key}", obj.get("class_name"))
        if hit is not None:
            yield hit


def _module_hit(module: str, name: str | None, path: str, class_name: Any) -> _Hit | None:
    qualified = f"{module}.{name}" if name else module
    evidence = {"path": path, "module": module, "name": name}
    if _KERAS_MODULE.fullmatch(module):
        reason = _KERAS_GADGETS.get(name or "")
        if reason is None:
            return None
        return _Hit(MODULE, Severity.CRITICAL, f"module:{qualified}",
                    f"Keras config calls {qualified}, which {reason}",
                    {**evidence, "reason": reason})
    if module == "builtins" and class_name == "function":
        return None  # Keras looks such names up in its own modules only
    verdict = pickle_policy.classify(qualified)
    if verdict.kind is pickle_policy.Kind.DANGEROUS:
        return _Hit(MODULE, Severity.CRITICAL, f"module:{qualified}",
                    f"Keras config references {qualified}: {verdict.reason}",
                    {**evidence, "reason": verdict.reason})
    return _Hit(MODULE, Severity.HIGH, f"module:{qualified}",
                f"Keras config imports {qualified} from outside Keras", evidence)


def _custom_hit(obj: dict[str, Any], path: str) -> _Hit | None:
    registered = obj.get("registered_name")
    if not isinstance(registered, str) or ">" not in registered:
        return None
    package = registered.split(">", 1)[0]
    if _KERAS_PACKAGE.fullmatch(package):
        return None
    return _Hit(CUSTOM, Severity.MEDIUM, f"custom:{registered}",
                f"Keras config needs the custom object {registered!r} from user code",
                {"path": path, "registered_name": registered, "module": obj.get("module")})


def _hits(config: Any) -> Iterator[_Hit]:
    for obj, path in _walk(config):
        yield from _lambda_hits(obj, path)
        yield from _module_hits(obj, path)
        custom = _custom_hit(obj, path)
        if custom is not None:
            yield custom


def scan_config(config: Any, loc: Location) -> list[Finding]:
    """Findings for a parsed Keras configuration, one per distinct reference."""
    merged: dict[str, tuple[_Hit, int]] = {}
    for hit in _hits(config):
        first, count = merged.get(hit.key, (hit, 0))
        merged[hit.key] = (first, count + 1)
    return [
        hit.rule.finding(hit.title[:_QUOTED], loc, severity=hit.severity,
                         evidence={**_quoted(hit.evidence), "occurrences": count})
        for hit, count in merged.values()
    ]


def _quoted(evidence: dict[str, Any]) -> dict[str, Any]:
    """Evidence with long strings (names taken from the file) cut short."""
    return {k: v[:_QUOTED] if isinstance(v, str) else v for k, v in evidence.items()}


def parse_config(data: bytes | str, what: str, loc: Location) -> tuple[Any, list[Finding]]:
    """The parsed JSON, or a finding saying why it cannot be read."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        return json.loads(text), []
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, [rules.unreadable_finding(f"{what} is not valid JSON: {exc}"[:300], loc)]


def scan_config_bytes(data: bytes, loc: Location) -> list[Finding]:
    config, findings = parse_config(data, "Keras config.json", loc)
    return findings or scan_config(config, loc)


LAMBDA = rules.define(
    "BST-SCAN-KERAS-001",
    "keras-lambda-bytecode",
    "The Keras configuration carries a serialised Python lambda (a Lambda layer or a lambda "
    "argument): marshalled bytecode that Keras turns back into a function and runs when the "
    "model is loaded with safe mode off or called. It is arbitrary code.",
    "Do not load the model with safe_mode=False. Rebuild the Lambda as a registered custom "
    "layer in your own code, re-save, and re-check with `bastion scan PATH`.",
    Severity.CRITICAL,
)
MODULE = rules.define(
    "BST-SCAN-KERAS-002",
    "keras-module-reference",
    "The Keras configuration names a module outside Keras (or a Keras function that disables "
    "its protections or loads other files). Keras imports the module and takes the named "
    "attribute from it while loading, which runs that module's code and hands the model "
    "arbitrary callables such as os.system.",
    "Treat the file as malicious unless the module is your own; do not load it. Re-check "
    "with `bastion scan PATH` after re-saving from trusted code.",
    Severity.HIGH,
)
CUSTOM = rules.define(
    "BST-SCAN-KERAS-003",
    "keras-custom-object",
    "The Keras configuration needs a custom object registered by user code. Loading it "
    "requires importing that code, which is only as trustworthy as its source.",
    "Make sure the custom object's code comes from a trusted source before loading.",
    Severity.MEDIUM,
)
