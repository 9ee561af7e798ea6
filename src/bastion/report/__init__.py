"""Renderers: findings in, text out. Renderers never compute; checks never render."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bastion.findings import Finding


@dataclass
class Report:
    """What one command found: its findings, the artifacts it looked at, and its metrics."""

    command: str
    findings: list[Finding]
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


FORMATS = ("table", "json", "sarif")


def render(report: Report, fmt: str) -> str:
    """Text of a report in a machine format (json, sarif); the table prints itself."""
    if fmt == "json":
        from bastion.report.json_report import to_json

        return to_json(report)
    if fmt == "sarif":
        from bastion.report.sarif import to_sarif

        return to_sarif(report)
    raise ValueError(f"unknown report format {fmt!r}")
