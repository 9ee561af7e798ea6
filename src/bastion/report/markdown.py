"""The audit as Markdown for a pull-request comment: the gate, a score per threat, the
findings that matter with their fixes, the rest folded away. Kept under GitHub's comment
limit by folding and, as a last resort, truncating with a pointer to the full report."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bastion.findings import Finding, Severity
from bastion.report.html import shown_path

if TYPE_CHECKING:
    from bastion.audit import AuditResult

# GitHub refuses comments over 65,536 characters.
MAX_CHARS = 60_000
_ICON = {"critical": "🟥", "high": "🔴", "medium": "🟠", "low": "🔵", "info": "⚪"}


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").strip()


def _where(finding: Finding, root: str | None) -> str:
    where = shown_path(finding.location.path, root)
    if finding.location.member:
        where += f"!{finding.location.member}"
    return f"`{cell(where)}`"


def _finding_rows(result: AuditResult, findings: list[Finding], root: str | None) -> list[str]:
    rows = ["| severity | rule | where | finding | fix |", "| --- | --- | --- | --- | --- |"]
    for f in findings:
        gate = " (gate)" if f.severity >= result.threshold_for(f) else ""
        rows.append(
            f"| {_ICON[str(f.severity)]} {f.severity}{gate} | `{f.rule_id}` | {_where(f, root)} "
            f"| {cell(f.title)} | {cell(f.remediation)} |"
        )
    return rows


def to_markdown(result: AuditResult, command: str, report_link: str | None = None) -> str:
    root = os.path.dirname(result.config_path) if result.config_path else None
    verdict = (
        "✅ **gate passed**" if result.passed
        else f"❌ **gate failed**: {len(result.blocking)} finding(s) at or above "
        f"{result.fail_on}"
    )
    lines = [f"## Bastion audit: {cell(result.project)}", "", verdict, ""]
    lines += ["| threat | score | grade | findings | checks |",
              "| --- | ---: | :---: | ---: | --- |"]
    for s in result.scores.values():
        score = "not assessed" if s.score is None else str(s.score)
        lines.append(f"| {s.threat.value} | {score} | {s.grade} | {sum(s.findings.values())} "
                     f"| {', '.join(s.checks) or '—'} |")
    ordered = sorted(result.findings, key=lambda f: (-f.severity, f.location.path, f.rule_id))
    shown = [f for f in ordered if f.severity >= min(Severity.MEDIUM, result.fail_on)]
    folded = [f for f in ordered if f not in shown]
    if shown:
        lines += ["", f"### Findings ({len(shown)})", "", *_finding_rows(result, shown, root)]
    else:
        lines += ["", "No findings at medium or above."]
    if folded:
        lines += ["", f"<details><summary>{len(folded)} lower-severity finding(s)</summary>", "",
                  *_finding_rows(result, folded, root), "", "</details>"]
    lines += ["", "<details><summary>Checks</summary>", "",
              "| check | status | findings | seconds |", "| --- | --- | ---: | ---: |"]
    for o in result.outcomes:
        status = f"{o.status}: {cell(o.error)}" if o.error else o.status
        lines.append(f"| `{o.name}` | {status} | {len(o.result.findings)} | {o.seconds:.2f} |")
    lines += ["", "</details>", "", f"Re-run: `{cell(command)}`"]
    if report_link:
        lines.append(f"Full report: {report_link}")
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_CHARS:
        cut = text.rfind("\n", 0, MAX_CHARS)
        text = text[:cut] + "\n\n… truncated; the HTML and JSON reports have every finding.\n"
    return text
