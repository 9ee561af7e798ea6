"""Reading Bastion's own JSON reports back (`--format json` of any command, schema
report-v1) so model cards, datasheets and the ML-BOM can quote their metrics and findings."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.errors import InputError
from bastion.findings import Severity

SEVERITIES = {str(s) for s in Severity}


@dataclass(frozen=True)
class Metric:
    name: str  # the metric's own key, e.g. "robust_accuracy"
    value: float
    slice: str  # where it comes from: the command and any enclosing keys

    @property
    def text(self) -> str:
        return f"{self.value:.4g}"


@dataclass(frozen=True)
class ReportedFinding:
    rule_id: str
    title: str
    severity: str
    threat: str
    location: str
    remediation: str


@dataclass(frozen=True)
class Result:
    path: str
    command: str
    metrics: tuple[Metric, ...]
    findings: tuple[ReportedFinding, ...]

    @property
    def name(self) -> str:
        """The command's first word: `assess`, `scan`, `poison` ..."""
        return command_word(self.command)

    def by_threat(self, *threats: str) -> list[ReportedFinding]:
        return [f for f in self.findings if f.threat in threats]


def command_word(command: str) -> str:
    return command.split()[0] if command.strip() else "report"


def load_results(paths: Iterable[str | Path]) -> list[Result]:
    return [load_result(p) for p in paths]


def load_result(path: str | Path) -> Result:
    source = Path(path)
    try:
        document = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{source}: no such results file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{source}: not a JSON report ({exc})") from None
    if not isinstance(document, dict) or not str(document.get("schema_version", "")).startswith(
        "1."
    ):
        raise InputError(
            f"{source}: not a Bastion JSON report (write one with `--format json`)"
        )
    command, metrics, findings = (document.get(k) for k in ("command", "metrics", "findings"))
    if not isinstance(command, str) or not isinstance(metrics, dict):
        raise InputError(f"{source}: report lacks 'command' or 'metrics'")
    if not isinstance(findings, list):
        raise InputError(f"{source}: report 'findings' must be a list")
    return Result(
        path=str(source),
        command=command,
        metrics=tuple(_metrics(metrics, command_word(command))),
        findings=tuple(_finding(source, i, f) for i, f in enumerate(findings)),
    )


def _metrics(value: dict[str, Any], where: str) -> Iterator[Metric]:
    """Numeric leaves of the metrics object; nested keys become the slice."""
    for key, item in value.items():
        if isinstance(item, dict):
            yield from _metrics(item, f"{where}/{key}")
        elif isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item):
            yield Metric(str(key), float(item), where)


def _finding(source: Path, index: int, value: Any) -> ReportedFinding:
    try:
        location = value["location"]
        where = location["path"] + (f"!{location['member']}" if location.get("member") else "")
        finding = ReportedFinding(
            rule_id=str(value["rule_id"]),
            title=str(value["title"]),
            severity=str(value["severity"]),
            threat=str(value["threat"]),
            location=where,
            remediation=str(value.get("remediation", "")),
        )
    except (KeyError, TypeError):
        raise InputError(f"{source}: finding #{index + 1} is not a Bastion finding") from None
    if finding.severity not in SEVERITIES:
        raise InputError(f"{source}: finding #{index + 1} has unknown severity")
    return finding
