"""SARIF 2.1.0 output that GitHub code scanning accepts: stable rule ids with help text,
`security-severity` for GitHub's severity levels, repository-relative artifact locations,
and `partialFingerprints` so alerts keep their identity across runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import bastion
from bastion.findings import ATLAS, OWASP_ML, Finding, Rule, Severity, rule
from bastion.report import Report

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI = "https://github.com/bastion-ml/bastion"

# GitHub maps security-severity to critical (>= 9.0), high (7.0-8.9), medium (4.0-6.9), low.
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}
_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}


def _artifact(path: str) -> dict[str, str]:
    """Relative to the working directory when inside it (what code scanning expects)."""
    resolved = Path(path).resolve()
    try:
        return {
            "uri": resolved.relative_to(Path.cwd().resolve()).as_posix(),
            "uriBaseId": "SRCROOT",
        }
    except ValueError:
        return {"uri": resolved.as_uri()}


def _tags(r: Rule) -> list[str]:
    return ["security", r.threat.value, *r.references]


def _rule_descriptor(r: Rule) -> dict[str, Any]:
    refs = "\n".join(
        f"- OWASP ML Top 10 {ref}: {OWASP_ML[ref]}"
        if ref in OWASP_ML
        else f"- MITRE ATLAS {ref}: {ATLAS[ref]}"
        for ref in r.references
    )
    return {
        "id": r.rule_id,
        "name": r.name,
        "shortDescription": {"text": r.name.replace("-", " ")},
        "fullDescription": {"text": r.help},
        "help": {
            "text": f"{r.help}\n\nRemediation: {r.remediation}",
            "markdown": f"{r.help}\n\n**Remediation:** {r.remediation}\n\n**References:**\n{refs}",
        },
        "defaultConfiguration": {"level": _LEVEL[r.default_severity]},
        "properties": {
            "security-severity": _SECURITY_SEVERITY[r.default_severity],
            "tags": _tags(r),
            "precision": "high",
        },
    }


def _fingerprint(finding: Finding, uri: str) -> str:
    """Stable across runs: no offsets or timings, only what identifies the problem."""
    key = "|".join(
        [
            finding.rule_id,
            uri,
            finding.location.member or "",
            str(finding.evidence.get("global", "")),
        ]
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _result(finding: Finding, index: int) -> dict[str, Any]:
    artifact = _artifact(finding.location.path)
    region: dict[str, Any] = {"startLine": 1}
    if finding.location.offset is not None:
        region["byteOffset"] = finding.location.offset
    result: dict[str, Any] = {
        "ruleId": finding.rule_id,
        "ruleIndex": index,
        "level": _LEVEL[finding.severity],
        "message": {"text": f"{finding.title}. Fix: {finding.remediation}"},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": artifact,
                    "region": region,
                }
            }
        ],
        "partialFingerprints": {"bastionFinding/v1": _fingerprint(finding, artifact["uri"])},
        "properties": {
            "severity": str(finding.severity),
            "security-severity": _SECURITY_SEVERITY[finding.severity],
            "threat": finding.threat.value,
            "evidence": finding.evidence,
        },
    }
    if finding.location.member:
        result["locations"][0]["logicalLocations"] = [
            {"fullyQualifiedName": finding.location.member, "kind": "member"}
        ]
    return result


def sarif_dict(report: Report) -> dict[str, Any]:
    rule_ids = sorted({f.rule_id for f in report.findings})
    index = {rule_id: i for i, rule_id in enumerate(rule_ids)}
    ordered = sorted(report.findings, key=lambda f: (-f.severity, f.location.path, f.rule_id))
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "Bastion",
                        "version": bastion.__version__,
                        "semanticVersion": bastion.__version__,
                        "informationUri": INFORMATION_URI,
                        "rules": [_rule_descriptor(rule(r)) for r in rule_ids],
                    }
                },
                "invocations": [{"executionSuccessful": True, "commandLine": report.command}],
                "originalUriBaseIds": {
                    "SRCROOT": {"uri": Path.cwd().resolve().as_uri().rstrip("/") + "/"}
                },
                "results": [_result(f, index[f.rule_id]) for f in ordered],
            }
        ],
    }


def to_sarif(report: Report) -> str:
    return json.dumps(sarif_dict(report), indent=2, default=str) + "\n"
