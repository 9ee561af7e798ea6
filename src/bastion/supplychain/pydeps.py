"""The Python packages a model depends on, from one of three sources: the running
environment (importlib.metadata), a requirements file, or a lock file (uv.lock, poetry.lock,
pylock.toml). `bastion bom` lists them; `bastion deps` checks them for known vulnerabilities.

Every source gives the same shape: canonical name, version when known (a requirements line
without an exact pin has none), and the names each package requires when the source says.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from packageurl import PackageURL
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from bastion.errors import InputError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PathLike = str | os.PathLike[str]

# pip options that take a value and only steer where or how pip installs: they name no
# package, so a requirements file may carry them.
_INSTALL_OPTIONS = {
    "-i", "--index-url", "--extra-index-url", "-f", "--find-links", "--trusted-host",
    "--no-binary", "--only-binary", "--use-feature",
}
_INSTALL_FLAGS = {"--no-index", "--pre", "--prefer-binary", "--require-hashes"}
_INCLUDES = {"-r", "--requirement"}
_CONSTRAINTS = {"-c", "--constraint"}
_COMMENT = re.compile(r"(^|\s)#.*$")
_HASH_OPTION = re.compile(r"\s--hash[=\s]\S+")  # per-requirement hash pins name no package


@dataclass(frozen=True)
class Package:
    name: str  # canonical (PEP 503) name
    version: str | None
    requires: tuple[str, ...] = ()  # canonical names of what it depends on
    direct: bool = True  # asked for by the user, not only pulled in by another package

    @property
    def purl(self) -> str:
        return PackageURL(type="pypi", name=self.name, version=self.version).to_string()


@dataclass(frozen=True)
class PackageSet:
    source: str  # "environment", or the file it was read from
    packages: tuple[Package, ...]

    def names(self) -> set[str]:
        return {p.name for p in self.packages}


def pinned_version(requirement: Requirement) -> str | None:
    """The exact version a requirement pins (`==1.2`, `===1.2`), else None."""
    specs = list(requirement.specifier)
    if len(specs) == 1 and specs[0].operator in ("==", "===") and "*" not in specs[0].version:
        return specs[0].version
    return None


# ------------------------------------------------------------------ environment


def from_environment() -> PackageSet:
    """The distributions importable by this Python, with their (unconditional) requirements."""
    found: dict[str, tuple[str, list[str]]] = {}
    for dist in importlib.metadata.distributions():
        raw_name = dist.metadata["Name"]
        if not raw_name:
            continue
        name = canonicalize_name(raw_name)
        if name not in found:  # the first on sys.path is the one Python imports
            found[name] = (dist.version, _runtime_requirements(dist.requires or []))
    required = {dep for _, deps in found.values() for dep in deps if dep in found}
    packages = [
        Package(name, version, tuple(sorted(set(d for d in deps if d in found))),
                direct=name not in required)
        for name, (version, deps) in sorted(found.items())
    ]
    return PackageSet("environment", tuple(packages))


def _runtime_requirements(lines: Iterable[str]) -> list[str]:
    """Names required without any extra, on this platform."""
    names = []
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue  # a broken installed package's metadata is not the user's input
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(canonicalize_name(req.name))
    return names


# ------------------------------------------------------------------ requirements files


def from_requirements(path: PathLike) -> PackageSet:
    """Packages named in a pip requirements file (following `-r` includes). Only lines
    with an exact pin carry a version."""
    source = Path(path)
    packages: dict[str, Package] = {}
    for req in _requirements(source, seen=set()):
        name = canonicalize_name(req.name)
        version = pinned_version(req)
        known = packages.get(name)
        if known is None or (known.version is None and version is not None):
            packages[name] = Package(name, version)
    return PackageSet(str(source), tuple(packages[n] for n in sorted(packages)))


def _logical_lines(source: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) with comments removed and `\\` continuations joined."""
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{source}: no such requirements file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{source}: cannot read requirements file ({exc})") from None
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined = (pending + line).strip()
        pending = ""
        if joined:
            yield start, joined
    if pending.strip():
        yield start, pending.strip()


def _requirements(source: Path, seen: set[Path]) -> Iterator[Requirement]:
    resolved = source.resolve()
    if resolved in seen:
        raise InputError(f"{source}: requirements files include each other in a loop")
    seen.add(resolved)
    for number, line in _logical_lines(source):
        where = f"{source}:{number}"
        if line.startswith("-"):
            yield from _option(source, where, line, seen)
            continue
        text = _HASH_OPTION.sub("", line)
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            reason = str(exc).splitlines()[0]
            raise InputError(f"{where}: not a valid requirement {line!r} ({reason})") from None
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            yield req


def _option(source: Path, where: str, line: str, seen: set[Path]) -> Iterator[Requirement]:
    option, _, value = line.replace("=", " ", 1).partition(" ")
    value = value.strip()
    if option in _INCLUDES:
        if not value:
            raise InputError(f"{where}: {option} needs a file name")
        yield from _requirements(source.parent / value, seen)
    elif option in _CONSTRAINTS or option in _INSTALL_OPTIONS or option in _INSTALL_FLAGS:
        return  # constraints limit versions but add no package; the rest steer pip
    elif option in ("-e", "--editable"):
        raise InputError(
            f"{where}: editable requirement {value!r} has no version to record; "
            "list the installed environment instead (omit --requirements)"
        )
    else:
        raise InputError(f"{where}: unknown pip option {option!r}")


# ------------------------------------------------------------------ lock files


def from_lock(path: PathLike) -> PackageSet:
    """Packages of a uv.lock, poetry.lock or PEP 751 pylock.toml: exact versions and the
    dependency graph. Packages nothing else depends on count as direct."""
    source = Path(path)
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{source}: no such lock file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{source}: not a readable TOML lock file ({exc})") from None
    entries = document.get("package", document.get("packages"))
    if not isinstance(entries, list) or not entries:
        raise InputError(
            f"{source}: no [[package]] or [[packages]] tables; expected uv.lock, poetry.lock "
            "or pylock.toml"
        )
    graph: dict[str, tuple[str | None, list[str]]] = {}
    for i, entry in enumerate(entries):
        name, version, deps = _lock_entry(source, i, entry)
        graph[name] = (version, deps)
    required = {dep for _, deps in graph.values() for dep in deps}
    packages = [
        Package(name, version, tuple(sorted(set(d for d in deps if d in graph))),
                direct=name not in required)
        for name, (version, deps) in sorted(graph.items())
    ]
    return PackageSet(str(source), tuple(packages))


def _lock_entry(source: Path, i: int, entry: object) -> tuple[str, str | None, list[str]]:
    where = f"{source}: package #{i + 1}"
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise InputError(f"{where} has no name")
    version = entry.get("version")
    if version is not None and not isinstance(version, str):
        raise InputError(f"{where} ({entry['name']}): version must be a string")
    raw = entry.get("dependencies", [])
    if isinstance(raw, dict):  # poetry: {name: constraint}
        deps = list(raw)
    elif isinstance(raw, list):  # uv, pylock: [{name = ...}]
        deps = [d["name"] for d in raw if isinstance(d, dict) and isinstance(d.get("name"), str)]
    else:
        raise InputError(f"{where} ({entry['name']}): dependencies must be a list or table")
    return canonicalize_name(entry["name"]), version, [canonicalize_name(d) for d in deps]
