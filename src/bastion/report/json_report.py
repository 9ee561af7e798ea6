"""Bastion's JSON report, schema `report/schemas/report-v1.json` (documented in
docs/json-report.md). Bump SCHEMA_VERSION on any incompatible change."""

from __future__ import annotations

import json
from typing import Any

import bastion
from bastion.findings import Finding, Severity
from bastion.report import Report

SCHEMA_VERSION = "1.0"
SCHEMA_ID = "https://bastion.dev/schemas/report-v1.json"


def finding_dict(finding: Finding) -> dict[str, Any]:
    loc = finding.location
    return {
        "rule_id": finding.rule_id,
        "title": finding.title,
        "severity": str(finding.severity),
        "threat": finding.threat.value,
        "location": {"path": loc.path, "member": loc.member, "offset": loc.offset},
        "evidence": finding.evidence,
        "remediation": finding.remediation,
        "references": list(finding.references),
    }


def report_dict(report: Report) -> dict[str, Any]:
    counts = {str(s): 0 for s in Severity}
    for finding in report.findings:
        counts[str(finding.severity)] += 1
    ordered = sorted(report.findings, key=lambda f: (-f.severity, f.location.path, f.rule_id))
    return {
        "$schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "bastion", "version": bastion.__version__},
        "command": report.command,
        "summary": {"findings": len(report.findings), "by_severity": counts},
        "artifacts": report.artifacts,
        "metrics": report.metrics,
        "findings": [finding_dict(f) for f in ordered],
    }


def to_json(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2, sort_keys=False, default=str) + "\n"
