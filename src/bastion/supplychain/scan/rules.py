"""The scanner's rules: stable ids, what each means and how to fix it."""

from __future__ import annotations

from bastion.findings import Finding, Location, Rule, Severity, Threat, register

_MODEL_FILE = ("ML06", "AML.T0010.003", "AML.T0011.000")
_SAFE_FORMAT = (
    "Prefer a format that cannot run code on load (safetensors, ONNX, .skops), or load "
    "with torch.load(weights_only=True). Do not load this file until its origin is trusted."
)


def define(rule_id: str, name: str, help_text: str, remediation: str, severity: Severity,
          references: tuple[str, ...] = _MODEL_FILE) -> Rule:
    return register(
        Rule(rule_id, name, help_text, remediation, Threat.SUPPLY_CHAIN, severity, references)
    )


PKL_GADGET = define(
    "BST-SCAN-PKL-001",
    "pickle-code-execution-gadget",
    "The pickle imports a callable that runs code, touches files or the network, imports "
    "modules by name or loads further payloads. Loading the file hands that callable to "
    "the unpickler, which is how malicious model files take over the loading machine.",
    "Treat the file as malicious: do not load it, find where it came from, and replace it "
    "with a copy from a trusted source in a format that cannot run code (safetensors). "
    "Re-check with `bastion scan PATH`.",
    Severity.CRITICAL,
)
PKL_UNKNOWN = define(
    "BST-SCAN-PKL-002",
    "pickle-unknown-global",
    "The pickle imports a global that is not on Bastion's allowlist of safe reconstructors. "
    "Importing runs the module's top-level code and the global is usually called, so an "
    "unknown global is treated as unsafe until reviewed (default deny).",
    "Review the named global. If it is your own class, save the model's weights in "
    "safetensors instead, or mark your package trusted (`bastion scan --trust PACKAGE`).",
    Severity.HIGH,
)
PKL_TRUSTED = define(
    "BST-SCAN-PKL-003",
    "pickle-trusted-class",
    "The pickle rebuilds a class from a named, trusted ML package (scikit-learn, numpy, "
    "scipy, pandas, torch, xgboost, lightgbm). This is how such models are normally saved, "
    "but a pickle still runs code on load.",
    "Fine for files from a trusted source; prefer safetensors, ONNX or .skops for sharing.",
    Severity.LOW,
)
PKL_MALFORMED = define(
    "BST-SCAN-PKL-004",
    "pickle-malformed-stream",
    "The pickle stream breaks partway. Opcodes before the break still run when the file is "
    "loaded; they were analysed, but a broken stream is a common way to hide payloads from "
    "scanners and the rest of the file could not be checked.",
    "Do not load the file; obtain an intact copy and re-check with `bastion scan PATH`.",
    Severity.MEDIUM,
)
PKL_NESTED = define(
    "BST-SCAN-PKL-005",
    "pickle-nested-payload",
    "The pickle passes embedded bytes to a loader (pickle.loads, torch.load, numpy.load), "
    "hiding one payload inside another. The embedded payload was scanned as well.",
    "Re-save the object without nesting serialised payloads; prefer safetensors.",
    Severity.MEDIUM,
)
PKL_UNRESOLVED = define(
    "BST-SCAN-PKL-006",
    "pickle-unresolvable-global",
    "The pickle imports a global whose name is computed at load time or comes from an "
    "extension-registry code the scanner cannot resolve. Benign pickles name their globals "
    "literally; computed names are used to evade scanners.",
    "Treat the file as malicious and do not load it.",
    Severity.CRITICAL,
)
PKL_EXPANSION = define(
    "BST-SCAN-PKL-007",
    "pickle-expansion-bomb",
    "Shared references (memo, DUP) make the loaded object expand far beyond the file's size "
    "(a billion-laughs bomb): loading or processing it exhausts memory.",
    "Do not load the file.",
    Severity.HIGH,
)
PKL_DEEP_NESTING = define(
    "BST-SCAN-PKL-008",
    "pickle-deep-nesting",
    "The pickle nests containers or calls deeper than Python's recursion limit, deeper than "
    "pickle itself writes. Code that walks the loaded object recursively (repr, copy, "
    "comparison, serialisation, many scanners) overflows the stack: a crafted file meant "
    "to crash loaders and scanners.",
    "Do not load the file.",
    Severity.HIGH,
)
LIMIT = define(
    "BST-SCAN-LIMIT-001",
    "scan-resource-limit",
    "The file exceeds a resource limit of the scanner (decompressed size, compression ratio, "
    "nesting, opcodes). Decompression bombs and deep nesting are used to exhaust loaders and "
    "to hide payloads beyond what scanners read, so the file is not considered clean.",
    "Do not load the file unless its origin is trusted; raise the limit only for a known file.",
    Severity.HIGH,
)
UNREADABLE = define(
    "BST-SCAN-READ-001",
    "scan-unreadable-file",
    "The file or an archive member could not be read or parsed, so it could not be checked. "
    "An unscannable file is not a clean file.",
    "Obtain an intact copy of the file and re-check it with `bastion scan PATH`.",
    Severity.HIGH,
)
SKIPPED = define(
    "BST-SCAN-SKIP-001",
    "scan-skipped-format",
    "The file's format carries no code or references the scanner checks, so it was skipped.",
    "Nothing to do unless the file is a model in a format Bastion does not know yet.",
    Severity.INFO,
)


def limit_finding(message: str, loc: Location) -> Finding:
    return LIMIT.finding(f"Scan stopped: {message}", loc, evidence={"limit": message})


def unreadable_finding(message: str, loc: Location) -> Finding:
    return UNREADABLE.finding(f"Cannot be read: {message}", loc, evidence={"error": message})
