"""The manifest: every file (or file shard) of an artifact paired with its digest, and the
in-toto v1 Statement that carries it, in the OpenSSF model-signing v1.0 predicate format.

Facts of the format (read from the sigstore/model-transparency documentation and behaviour):
- resources are sorted by path components (then shard start, end); a shard is named
  "path:start:end" with `end` exclusive, and an empty file has no shard;
- a resource's algorithm is the hash type for `files`, and "<hash>-sharded-<shard_size>" for
  `shards`; a single-file artifact has one resource named ".";
- the subject is the artifact's final path component with a sha256 over the concatenated raw
  resource digests, in the order the resources are listed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from bastion.supplychain.sign import errors
from bastion.supplychain.sign.errors import Problem, VerificationError
from bastion.supplychain.sign.hashing import HASH_TYPES, HashOutcome, Span, hash_spans
from bastion.supplychain.sign.tree import SINGLE_FILE_NAME, Listing

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
LEGACY_PREDICATE_TYPE = "https://model_signing/Digests/v0.1"
FILES = "files"
SHARDS = "shards"
METHODS = (FILES, SHARDS)
DEFAULT_SHARD_SIZE = 1_000_000_000
DIGEST_HEX_LENGTH = {"sha256": 64, "blake2b": 128, "blake3": 64}


@dataclass(frozen=True)
class Serialization:
    method: str
    hash_type: str
    allow_symlinks: bool
    ignore_paths: tuple[str, ...] = ()
    shard_size: int | None = None

    @property
    def resource_algorithm(self) -> str:
        if self.method == SHARDS:
            return f"{self.hash_type}-sharded-{self.shard_size}"
        return self.hash_type

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "hash_type": self.hash_type}
        if self.method == SHARDS:
            out["shard_size"] = self.shard_size
        out["allow_symlinks"] = self.allow_symlinks
        if self.ignore_paths:
            out["ignore_paths"] = sorted(self.ignore_paths)
        return out


@dataclass(frozen=True)
class Resource:
    name: str
    algorithm: str
    digest: str


def split_shard(name: str) -> tuple[str, int, int]:
    """'path:start:end' -> (path, start, end); the path may itself contain ':'."""
    path, start, end = name.rsplit(":", 2)
    return path, int(start), int(end)


def resource_order(name: str, method: str) -> tuple[Any, ...]:
    """The peer's canonical order: by path components, then by shard offsets."""
    if method == SHARDS:
        path, start, end = split_shard(name)
        return (_components(path), start, end)
    return (_components(name),)


def _components(path: str) -> tuple[str, ...]:
    return () if path == SINGLE_FILE_NAME else tuple(path.split("/"))


@dataclass(frozen=True)
class Manifest:
    name: str
    serialization: Serialization
    resources: tuple[Resource, ...]

    def root_digest(self) -> str:
        hasher = hashlib.sha256()
        for resource in self.resources:
            hasher.update(bytes.fromhex(resource.digest))
        return hasher.hexdigest()

    def statement(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [{"name": self.name, "digest": {"sha256": self.root_digest()}}],
            "predicateType": PREDICATE_TYPE,
            "predicate": {
                "serialization": self.serialization.to_json(),
                "resources": [
                    {"name": r.name, "algorithm": r.algorithm, "digest": r.digest}
                    for r in self.resources
                ],
            },
        }

    def digests(self) -> dict[str, str]:
        return {r.name: r.digest for r in self.resources}


def spans_for(listing: Listing, serialization: Serialization) -> list[Span]:
    """Work units: one per file for `files`, one per shard for `shards`."""
    if serialization.method == FILES:
        return [Span(e.name, e.path, 0, None, e.size) for e in listing.files]
    shard = serialization.shard_size or DEFAULT_SHARD_SIZE
    spans = []
    for entry in listing.files:
        for start in range(0, entry.size, shard):
            end = min(start + shard, entry.size)
            spans.append(Span(f"{entry.name}:{start}:{end}", entry.path, start, end, end - start))
    return spans


def build_manifest(
    name: str, listing: Listing, serialization: Serialization, workers: int | None = None
) -> tuple[Manifest, dict[Hashable, OSError]]:
    """Hash the listed files; returns the manifest and the read errors by resource name."""
    outcome: HashOutcome = hash_spans(
        spans_for(listing, serialization),
        serialization.hash_type,
        workers=workers,
        follow_symlinks=serialization.allow_symlinks,
    )
    algorithm = serialization.resource_algorithm
    resources = sorted(
        (Resource(str(key), algorithm, digest.hex()) for key, digest in outcome.digests.items()),
        key=lambda r: resource_order(r.name, serialization.method),
    )
    return Manifest(name, serialization, tuple(resources)), outcome.errors


# --- reading a statement back, refusing anything that is not exactly the v1.0 format ---


class _Reader:
    """Typed access to the decoded statement; every wrong shape is a 'malformed' problem."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, reason: str) -> VerificationError:
        return VerificationError([errors.malformed(self.label, reason)])

    def unsupported(self, what: str) -> VerificationError:
        return VerificationError([errors.unsupported(self.label, what)])

    def field(self, obj: Any, key: str, kind: type, where: str) -> Any:
        if not isinstance(obj, dict) or key not in obj:
            raise self.fail(f"{where} has no {key!r}")
        value = obj[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(f"{where}.{key} is not a {kind.__name__}")
        return value


def name_escapes(name: str) -> bool:
    """True for a path that could reach outside the folder or is not a clean relative path."""
    if name == SINGLE_FILE_NAME:
        return False
    if not name or name.startswith("/") or "\x00" in name or "\\" in name:
        return True
    return any(part in ("", ".", "..") for part in name.split("/"))


def manifest_from_statement(statement: Any, label: str) -> Manifest:
    """Validate and decode the signed in-toto statement. Raises VerificationError."""
    read = _Reader(label)
    statement_type = read.field(statement, "_type", str, "statement")
    if statement_type != STATEMENT_TYPE:
        raise read.unsupported(f"statement type {statement_type!r} (expected {STATEMENT_TYPE})")
    predicate_type = read.field(statement, "predicateType", str, "statement")
    if predicate_type != PREDICATE_TYPE:
        legacy = predicate_type == LEGACY_PREDICATE_TYPE
        hint = " (model_signing v0.x; re-sign it)" if legacy else ""
        raise read.unsupported(f"predicate type {predicate_type!r}{hint}")
    subjects = read.field(statement, "subject", list, "statement")
    if len(subjects) != 1:
        raise read.fail(f"expected one subject, found {len(subjects)}")
    name = read.field(subjects[0], "name", str, "subject")
    digest = read.field(read.field(subjects[0], "digest", dict, "subject"), "sha256", str, "digest")
    predicate = read.field(statement, "predicate", dict, "statement")
    raw_serialization = read.field(predicate, "serialization", dict, "predicate")
    serialization = _read_serialization(read, raw_serialization)
    raw_resources = read.field(predicate, "resources", list, "predicate")
    resources = _read_resources(read, raw_resources, serialization)
    manifest = Manifest(name, serialization, resources)
    if manifest.root_digest() != digest.lower():
        raise read.fail("subject digest does not match the listed resources")
    return manifest


def _read_serialization(read: _Reader, raw: dict[str, Any]) -> Serialization:
    method = read.field(raw, "method", str, "serialization")
    if method not in METHODS:
        raise read.unsupported(f"serialization method {method!r} (expected files or shards)")
    hash_type = read.field(raw, "hash_type", str, "serialization")
    if hash_type not in HASH_TYPES:
        raise read.unsupported(f"hash type {hash_type!r} (expected {', '.join(HASH_TYPES)})")
    allow_symlinks = read.field(raw, "allow_symlinks", bool, "serialization")
    ignore = raw.get("ignore_paths", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise read.fail("serialization.ignore_paths is not a list of paths")
    problems = [errors.escapes(p) for p in ignore if name_escapes(p) or p == SINGLE_FILE_NAME]
    if problems:
        raise VerificationError(problems)
    shard_size = None
    if method == SHARDS:
        shard_size = _shard_size(read, raw.get("shard_size"))
    return Serialization(method, hash_type, allow_symlinks, tuple(ignore), shard_size)


def _shard_size(read: _Reader, value: Any) -> int:
    # The peer writes numbers through a protobuf Struct, so 1000000000 arrives as 1e9 (a float).
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise read.fail("serialization.shard_size is not a positive integer")
    return value


def _read_resources(
    read: _Reader, raw: list[Any], serialization: Serialization
) -> tuple[Resource, ...]:
    expected_algorithm = serialization.resource_algorithm
    hex_length = DIGEST_HEX_LENGTH[serialization.hash_type]
    resources, seen, escaping = [], set(), []
    for item in raw:
        name = read.field(item, "name", str, "resource")
        algorithm = read.field(item, "algorithm", str, "resource")
        digest = read.field(item, "digest", str, "resource").lower()
        if algorithm != expected_algorithm:
            raise read.unsupported(
                f"resource algorithm {algorithm!r} (serialization implies {expected_algorithm!r})"
            )
        if len(digest) != hex_length or not _is_hex(digest):
            raise read.fail(f"digest of {name!r} is not {hex_length} hex digits")
        path = _resource_path(read, name, serialization.method)
        if name_escapes(path):
            escaping.append(errors.escapes(name))
        if name in seen:
            raise read.fail(f"resource {name!r} is listed twice")
        seen.add(name)
        resources.append(Resource(name, algorithm, digest))
    if escaping:
        raise VerificationError(escaping)
    return tuple(resources)


def _resource_path(read: _Reader, name: str, method: str) -> str:
    if method == FILES:
        return name
    try:
        path, start, end = split_shard(name)
    except ValueError:
        raise read.fail(f"shard name {name!r} is not 'path:start:end'") from None
    if start < 0 or end <= start:
        raise read.fail(f"shard {name!r} has an empty or negative range")
    return path


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# --- comparing what was signed with what is on disk ---


def compare(
    expected: Manifest,
    actual: Manifest,
    present: Iterable[str] = (),
    refused: Iterable[str] = (),
    single_file_label: str = "",
) -> list[Problem]:
    """Every difference, by file: changed first, then missing, then extra, each sorted.
    `present` names the files on disk: in `shards` an emptied file has no shard left, and
    must read as changed, not missing. Files in `refused` (a symlink swapped in) already
    have their own problem and are not reported missing as well."""

    def show(path: str) -> str:
        return single_file_label if path == SINGLE_FILE_NAME and single_file_label else path

    method = expected.serialization.method
    if method == FILES:
        found = _compare_files(expected.digests(), actual.digests())
    else:
        found = _compare_shards(
            _by_file(expected.resources), _by_file(actual.resources), set(present)
        )
    skip = set(refused)
    found = [item for item in found if not (item[0] == errors.MISSING and item[1] in skip)]
    order = {errors.CHANGED: 0, errors.MISSING: 1, errors.EXTRA: 2}
    found.sort(key=lambda item: (order[item[0]], _components(item[1])))
    return [_problem(kind, show(path), detail) for kind, path, detail in found]


def _problem(kind: str, path: str, detail: str) -> Problem:
    if kind == errors.CHANGED:
        return errors.changed(path, detail)
    return errors.missing(path) if kind == errors.MISSING else errors.extra(path)


def _compare_files(expected: dict[str, str], actual: dict[str, str]) -> list[tuple[str, str, str]]:
    found = []
    for name in expected.keys() | actual.keys():
        if name not in actual:
            found.append((errors.MISSING, name, ""))
        elif name not in expected:
            found.append((errors.EXTRA, name, ""))
        elif expected[name] != actual[name]:
            found.append((errors.CHANGED, name, ""))
    return found


def _by_file(resources: Iterable[Resource]) -> dict[str, dict[tuple[int, int], str]]:
    files: dict[str, dict[tuple[int, int], str]] = {}
    for resource in resources:
        path, start, end = split_shard(resource.name)
        files.setdefault(path, {})[(start, end)] = resource.digest
    return files


def _compare_shards(
    expected: dict[str, dict[tuple[int, int], str]],
    actual: dict[str, dict[tuple[int, int], str]],
    present: set[str],
) -> list[tuple[str, str, str]]:
    found = []
    for path in expected.keys() | actual.keys():
        if path not in actual and path in present:
            signed = max(end for _, end in expected[path])
            found.append((errors.CHANGED, path, f"size 0 bytes, signed {signed}"))
        elif path not in actual:
            found.append((errors.MISSING, path, ""))
        elif path not in expected:
            found.append((errors.EXTRA, path, ""))
        elif expected[path].keys() != actual[path].keys():
            signed = max(end for _, end in expected[path])
            now = max(end for _, end in actual[path])
            found.append((errors.CHANGED, path, f"size {now} bytes, signed {signed}"))
        else:
            ranges = sorted(r for r in expected[path] if expected[path][r] != actual[path][r])
            if ranges:
                shown = ", ".join(f"bytes {s}-{e}" for s, e in ranges[:3])
                more = f" and {len(ranges) - 3} more shards" if len(ranges) > 3 else ""
                found.append((errors.CHANGED, path, shown + more))
    return found
