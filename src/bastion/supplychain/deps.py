"""Known vulnerabilities in a model's Python dependencies.

Two sources: pip-audit (online, the PyPI/OSV services) and, offline, a folder of OSV
advisories as in the OSV.dev zip exports (one JSON document per advisory). Offline matching
follows the OSV schema: `versions` lists exact affected versions, and ECOSYSTEM ranges are
walked in version order, `introduced` opening an affected span, `fixed` closing it before
that version and `last_affected` closing it after. Versions compare by PEP 440 (`packaging`).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvss import CVSS2, CVSS3, CVSS4
from cvss.exceptions import CVSSError
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from bastion.errors import InputError, UsageError
from bastion.findings import Finding, Location, Rule, Severity, Threat, register
from bastion.supplychain.pydeps import Package, PackageSet

_REFERENCES = ("ML06", "AML.T0010")

VULNERABLE = register(Rule(
    "BST-DEP-001",
    "vulnerable-dependency",
    "An installed or required Python package has a published vulnerability advisory that "
    "covers its version. Model code runs with the privileges of its host, so a vulnerable "
    "dependency (a deserialiser, an HTTP stack, a numerical library) is a way into the "
    "machine that trains or serves the model.",
    "Upgrade the package to a fixed version and re-check with `bastion deps`.",
    Threat.SUPPLY_CHAIN,
    Severity.HIGH,
    _REFERENCES,
))
UNPINNED = register(Rule(
    "BST-DEP-002",
    "unpinned-dependency",
    "A requirement names no exact version, so which release gets installed (and whether it "
    "is vulnerable) depends on the day it is installed; it cannot be checked offline.",
    "Pin it with `==` (`pip freeze` or `pip-compile` writes pinned files), or audit the "
    "installed environment or a lock file instead.",
    Threat.SUPPLY_CHAIN,
    Severity.LOW,
    _REFERENCES,
))

# GitHub advisories carry a qualitative severity when no CVSS vector is given.
_DATABASE_SEVERITY = {
    "low": Severity.LOW, "moderate": Severity.MEDIUM, "medium": Severity.MEDIUM,
    "high": Severity.HIGH, "critical": Severity.CRITICAL,
}
_CVSS = {"CVSS_V4": CVSS4, "CVSS_V3": CVSS3, "CVSS_V2": CVSS2}  # preferred first


def severity_of_score(score: float) -> Severity:
    """CVSS qualitative bands: 0 none, 0.1-3.9 low, 4-6.9 medium, 7-8.9 high, 9+ critical."""
    if score == 0:
        return Severity.INFO
    if score < 4:
        return Severity.LOW
    if score < 7:
        return Severity.MEDIUM
    if score < 9:
        return Severity.HIGH
    return Severity.CRITICAL


@dataclass(frozen=True)
class Rating:
    severity: Severity
    basis: str  # "CVSS_V3 9.8", "database: HIGH" or "not scored"
    vector: str | None = None


def rate(severities: Iterable[dict[str, Any]], database: dict[str, Any] | None) -> Rating:
    """The advisory's severity: its newest valid CVSS vector, else the database's label."""
    by_type = {s.get("type"): s.get("score") for s in severities if isinstance(s, dict)}
    for kind, parser in _CVSS.items():
        vector = by_type.get(kind)
        if not isinstance(vector, str):
            continue
        try:
            score = float(parser(vector).base_score)
        except (CVSSError, ValueError, KeyError):
            continue  # a malformed vector rates nothing; try the next kind
        return Rating(severity_of_score(score), f"{kind} {score:g}", vector)
    label = str((database or {}).get("severity", "")).lower()
    if label in _DATABASE_SEVERITY:
        return Rating(_DATABASE_SEVERITY[label], f"database: {label}")
    return Rating(VULNERABLE.default_severity, "not scored")


# ------------------------------------------------------------------ OSV advisories


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass(frozen=True)
class Span:
    """One ECOSYSTEM range's events, sorted as the OSV schema evaluates them."""

    events: tuple[tuple[str, Version | None], ...]  # (kind, version); None = "0", the start

    def contains(self, version: Version) -> bool:
        affected = False
        for kind, bound in self.events:
            if kind == "introduced" and (bound is None or version >= bound):
                affected = True
            elif bound is not None and (
                (kind == "fixed" and version >= bound)
                or (kind == "last_affected" and version > bound)
            ):
                affected = False
        return affected

    def fix_after(self, version: Version) -> Version | None:
        return min((b for k, b in self.events if k == "fixed" and b and b > version),
                   default=None)


@dataclass(frozen=True)
class Affected:
    advisory: str  # id
    aliases: tuple[str, ...]
    summary: str
    severities: tuple[dict[str, Any], ...]  # OSV `severity` entries, advisory and package
    database: dict[str, Any] | None  # OSV `database_specific`
    spans: tuple[Span, ...]
    versions: frozenset[str]
    source: str  # the advisory file

    @functools.cached_property
    def rating(self) -> Rating:
        """Scored on first use: most advisories of an export never match, and parsing a
        CVSS vector costs more than reading the advisory."""
        return rate(self.severities, self.database)

    def covers(self, version: str) -> bool:
        if version in self.versions:
            return True
        parsed = _version(version)
        return parsed is not None and any(s.contains(parsed) for s in self.spans)

    def fixed_in(self, version: str) -> Version | None:
        """The first fixed release after `version` in the range that affects it."""
        parsed = _version(version)
        if parsed is None:
            return None
        return min(
            (f for s in self.spans if s.contains(parsed) and (f := s.fix_after(parsed))),
            default=None,
        )


@dataclass
class OsvDatabase:
    folder: str
    by_package: dict[str, list[Affected]] = field(default_factory=lambda: defaultdict(list))
    advisories: int = 0

    def lookup(self, name: str, version: str) -> list[Affected]:
        return [a for a in self.by_package.get(name, []) if a.covers(version)]


def load_osv_db(folder: str | Path) -> OsvDatabase:
    """Every PyPI advisory of an OSV export folder (`*.json`, searched recursively)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: no such OSV folder (unzip an OSV export, e.g. PyPI/all.zip)")
    db = OsvDatabase(str(root))
    for path in sorted(root.rglob("*.json"), key=str):
        advisory = _read_advisory(path)
        if advisory.get("withdrawn"):
            continue
        db.advisories += 1
        for name, affected in _affected_entries(path, advisory):
            db.by_package[name].append(affected)
    if db.advisories == 0:
        raise InputError(f"{root}: no OSV advisories (*.json) in this folder")
    return db


def _read_advisory(path: Path) -> dict[str, Any]:
    try:
        advisory = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable OSV advisory ({exc})") from None
    if not isinstance(advisory, dict) or not isinstance(advisory.get("id"), str):
        raise InputError(f"{path}: not an OSV advisory (no 'id')")
    if not isinstance(advisory.get("affected", []), list):
        raise InputError(f"{path}: OSV 'affected' must be a list")
    return advisory


def _affected_entries(path: Path, advisory: dict[str, Any]) -> Iterable[tuple[str, Affected]]:
    for i, entry in enumerate(advisory.get("affected", [])):
        where = f"{path}: affected[{i}]"
        package = entry.get("package") if isinstance(entry, dict) else None
        if not isinstance(package, dict) or not isinstance(package.get("name"), str):
            raise InputError(f"{where} has no package name")
        if str(package.get("ecosystem", "")).split(":")[0] != "PyPI":
            continue
        versions = entry.get("versions", [])
        if not isinstance(versions, list):
            raise InputError(f"{where}: 'versions' must be a list")
        yield canonicalize_name(package["name"]), Affected(
            advisory=advisory["id"],
            aliases=tuple(str(a) for a in advisory.get("aliases", [])),
            summary=str(advisory.get("summary") or advisory.get("details", ""))[:300],
            severities=(*_list(advisory.get("severity")), *_list(entry.get("severity"))),
            database=advisory.get("database_specific"),
            spans=tuple(_spans(where, entry.get("ranges", []))),
            versions=frozenset(str(v) for v in versions),
            source=str(path),
        )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _spans(where: str, ranges: Any) -> Iterable[Span]:
    if not isinstance(ranges, list):
        raise InputError(f"{where}: 'ranges' must be a list")
    for j, item in enumerate(ranges):
        if not isinstance(item, dict) or not isinstance(item.get("events"), list):
            raise InputError(f"{where}: ranges[{j}] has no events list")
        if item.get("type") != "ECOSYSTEM":
            continue  # GIT and SEMVER ranges do not describe PyPI release versions
        events = []
        for event in item["events"]:
            if not isinstance(event, dict) or len(event) != 1:
                raise InputError(f"{where}: ranges[{j}] event {event!r} is not one key/value")
            ((kind, text),) = event.items()
            if kind not in ("introduced", "fixed", "last_affected", "limit"):
                raise InputError(f"{where}: ranges[{j}] has unknown event {kind!r}")
            if kind == "introduced" and text == "0":
                events.append((kind, None))
            elif (bound := _version(str(text))) is not None:
                events.append((kind, bound))
            # else: not a PEP 440 version, so it cannot be ordered against any release
        # A "0" start sorts first; at equal versions OSV applies introduced first.
        events.sort(key=lambda e: (e[1] is not None, e[1] or Version("0"), e[0] != "introduced"))
        yield Span(tuple(events))


# ------------------------------------------------------------------ findings


@dataclass(frozen=True)
class Vulnerability:
    package: str
    version: str
    advisory: str
    aliases: tuple[str, ...]
    summary: str
    rating: Rating
    fixed_in: str | None


def audit_offline(
    packages: PackageSet, db: OsvDatabase
) -> tuple[list[Vulnerability], list[Package]]:
    """(vulnerabilities, packages without a version to check)."""
    found, unpinned = [], []
    for package in packages.packages:
        if package.version is None:
            unpinned.append(package)
            continue
        for hit in db.lookup(package.name, package.version):
            fix = hit.fixed_in(package.version)
            found.append(Vulnerability(
                package.name, package.version, hit.advisory, hit.aliases, hit.summary,
                hit.rating, str(fix) if fix else None,
            ))
    return found, unpinned


def recheck_command(requirements: str | None, osv_db: str | None) -> str:
    parts = ["bastion deps"]
    if requirements:
        parts.append(f"--requirements {requirements}")
    if osv_db:
        parts.append(f"--osv-db {osv_db} --offline")
    return " ".join(parts)


def findings(
    vulnerabilities: Sequence[Vulnerability], unpinned: Sequence[Package], source: str,
    recheck: str,
) -> list[Finding]:
    """One finding per (package, advisory); the pip command upgrades past every advisory
    known for the package, so following any one finding fixes them all."""
    targets: dict[str, list[Version]] = defaultdict(list)
    for v in vulnerabilities:
        if v.fixed_in and (parsed := _version(v.fixed_in)):
            targets[v.package].append(parsed)
    result = []
    for v in vulnerabilities:
        location = Location(source, f"{v.package}=={v.version}")
        result.append(VULNERABLE.finding(
            f"{v.package} {v.version} is affected by {v.advisory}"
            + (f" ({v.summary})" if v.summary else ""),
            location,
            severity=v.rating.severity,
            evidence={
                "package": v.package, "version": v.version, "advisory": v.advisory,
                "aliases": list(v.aliases), "severity_basis": v.rating.basis,
                "cvss_vector": v.rating.vector, "fixed_in": v.fixed_in,
            },
            remediation=_remediation(v, targets.get(v.package), recheck),
        ))
    for package in unpinned:
        result.append(UNPINNED.finding(
            f"{package.name} has no pinned version; it cannot be checked offline",
            Location(source, package.name),
            evidence={"package": package.name},
            remediation=f"{UNPINNED.remediation} Then re-check with `{recheck}`.",
        ))
    return result


def _remediation(v: Vulnerability, fixes: list[Version] | None, recheck: str) -> str:
    if v.fixed_in is None:
        return (
            f"No fixed release of {v.package} is known for {v.advisory}. Review the advisory; "
            f"remove or replace {v.package}, or isolate the code path it affects. "
            f"Re-check with `{recheck}`."
        )
    target = max(fixes or [Version(v.fixed_in)])
    also = " (the first release fixing every advisory found for it)" if str(target) != \
        v.fixed_in else ""
    return (
        f"{v.advisory} is fixed in {v.package} {v.fixed_in}. Upgrade to {target}{also}: "
        f"`pip install --upgrade '{v.package}>={target}'`, update your pins, then re-check "
        f"with `{recheck}`."
    )


# ------------------------------------------------------------------ pip-audit (online)


def choose_source(offline: bool, osv_db: str | None) -> str:
    """"osv" when an OSV folder is given, "pip-audit" otherwise; offline needs the folder."""
    if osv_db:
        return "osv"
    if offline:
        raise UsageError("--offline needs --osv-db FOLDER (an unzipped OSV export)")
    return "pip-audit"


def pip_audit_command(requirements: str | None) -> list[str]:
    """pip-audit in this Python: without a file it audits this environment."""
    command = [sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner",
               "off"]
    if requirements:
        command += ["--requirement", requirements]
    return command


def run_pip_audit(requirements: str | None, timeout_s: float = 600) -> list[Vulnerability]:
    command = pip_audit_command(requirements)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise UsageError(f"pip-audit did not finish in {timeout_s:g} s; use --osv-db") from None
    try:
        return parse_pip_audit(done.stdout)
    except InputError:
        lines = (done.stderr or done.stdout).strip().splitlines()
        reason = lines[-1][:300] if lines else f"exit code {done.returncode}"
        raise UsageError(
            f"pip-audit failed ({reason}); offline, use --osv-db FOLDER --offline"
        ) from None


def parse_pip_audit(text: str) -> list[Vulnerability]:
    """Vulnerabilities from pip-audit's `--format json` output. pip-audit reports no
    severity, so each gets the rule's default, marked "not scored"."""
    try:
        document = json.loads(text)
        dependencies = document["dependencies"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError("pip-audit output is not its JSON report") from None
    found = []
    for dep in dependencies:
        for vuln in dep.get("vulns", []):
            fixes = sorted(v for v in map(_version, vuln.get("fix_versions", [])) if v)
            found.append(Vulnerability(
                canonicalize_name(dep["name"]), dep["version"], vuln["id"],
                tuple(vuln.get("aliases", [])), str(vuln.get("description", ""))[:300],
                Rating(VULNERABLE.default_severity, "not scored"),
                str(fixes[0]) if fixes else None,
            ))
    return found
