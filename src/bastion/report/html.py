"""The audit as one self-contained HTML file: inline CSS, plots as data URIs, no script and
nothing fetched from the network, so it opens the same from a CI artifact, a mail or a USB
stick. Text is escaped by Jinja's autoescape; nothing from a finding is trusted markup."""

from __future__ import annotations

import base64
import json
import os
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import jinja2
import markupsafe

import bastion
from bastion.findings import ATLAS, OWASP_ML, Finding, Severity, rule
from bastion.report.plots import threat_scores_png

if TYPE_CHECKING:
    from bastion.audit import AuditResult

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bastion.report", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


_CODE_SPAN = re.compile(r"`([^`]+)`")


def code_spans(text: str) -> markupsafe.Markup:
    """Escaped text with `backticked` commands set as code."""
    escaped = str(markupsafe.escape(text))
    return markupsafe.Markup(_CODE_SPAN.sub(r"<code>\1</code>", escaped))


_ENV.filters["code_spans"] = code_spans


def data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def reference_label(ref: str) -> str:
    if ref in OWASP_ML:
        return f"OWASP {ref} {OWASP_ML[ref]}"
    return f"ATLAS {ref} {ATLAS.get(ref, '')}".rstrip()


def shown_path(path: str, root: str | None) -> str:
    """A path relative to the project folder when inside it."""
    if root is None:
        return path
    relative = os.path.relpath(path, root)
    return path if relative.startswith("..") else relative


def _finding_view(result: AuditResult, finding: Finding, root: str | None) -> dict[str, Any]:
    check = result.check_of.get(id(finding))
    location = shown_path(finding.location.path, root)
    if finding.location.member:
        location += f" ! {finding.location.member}"
    if finding.location.offset is not None:
        location += f" @ {finding.location.offset}"
    return {
        "severity": str(finding.severity),
        "rule_id": finding.rule_id,
        "title": finding.title,
        "threat": finding.threat.value,
        "location": location,
        "why": rule(finding.rule_id).help,
        "remediation": finding.remediation,
        "recheck": f"bastion audit --only {check}" if check else "bastion audit",
        "evidence": json.dumps(finding.evidence, indent=2, default=str, sort_keys=True),
        "references": [reference_label(r) for r in finding.references],
        "blocking": finding.severity >= result.threshold_for(finding),
    }


def context(result: AuditResult, command: str) -> dict[str, Any]:
    root = os.path.dirname(result.config_path) if result.config_path else None
    ordered = sorted(result.findings,
                     key=lambda f: (-f.severity, f.threat.value, f.location.path, f.rule_id))
    scores = list(result.scores.values())
    plots = [
        {"check": o.name, "title": p.title, "caption": p.caption,
         "src": data_uri(p.media_type, p.data)}
        for o in result.outcomes for p in o.result.plots
    ]
    return {
        "project": result.project,
        "command": command,
        "version": bastion.__version__,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "passed": result.passed,
        "fail_on": str(result.fail_on),
        "thresholds": {k: str(v) for k, v in result.thresholds.items()},
        "blocking": len(result.blocking),
        "seconds": f"{result.seconds:.1f}",
        "backend": result.backend,
        "config": result.config_path or "(built in code)",
        "counts": {str(s): sum(f.severity == s for f in result.findings)
                   for s in reversed(Severity)},
        "scores": [
            {"threat": s.threat.value.replace("-", " "), "score": s.score, "grade": s.grade,
             "checks": ", ".join(s.checks), "findings": sum(s.findings.values())}
            for s in scores
        ],
        "score_chart": data_uri("image/png", threat_scores_png(scores)),
        "checks": [
            {"name": o.name, "title": o.title, "status": o.status,
             "seconds": f"{o.seconds:.2f}", "findings": len(o.result.findings),
             "threats": ", ".join(t.value for t in o.threats), "error": o.error}
            for o in result.outcomes
        ],
        "findings": [_finding_view(result, f, root) for f in ordered],
        "plots": plots,
    }


def to_html(result: AuditResult, command: str) -> str:
    return _ENV.get_template("audit.html.j2").render(context(result, command))
