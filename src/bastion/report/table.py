"""The human view: a rich table of findings, worst first, how to fix each kind of finding,
and a one-line verdict."""

from __future__ import annotations

import os
from collections import Counter

from rich.console import Console
from rich.table import Table

from bastion.findings import Location, Severity, rule
from bastion.report import Report

_STYLE = {
    Severity.CRITICAL: "bold white on red",
    Severity.HIGH: "bold red",
    Severity.MEDIUM: "yellow",
    Severity.LOW: "cyan",
    Severity.INFO: "dim",
}


def print_table(report: Report, console: Console, *, fail_on: Severity) -> None:
    """Findings at medium or above in full; low and info ones summarised per rule (the JSON
    and SARIF outputs always carry every finding)."""
    findings = sorted(report.findings, key=lambda f: (-f.severity, str(f.location), f.rule_id))
    shown = [f for f in findings if f.severity >= min(Severity.MEDIUM, fail_on)]
    if shown:
        table = Table(title=f"bastion {report.command}", title_justify="left", expand=True)
        table.add_column("severity", no_wrap=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("location", overflow="fold", ratio=2)
        table.add_column("finding", overflow="fold", ratio=3)
        for f in shown:
            table.add_row(
                f"[{_STYLE[f.severity]}]{f.severity}[/]", f.rule_id, _where(f.location), f.title
            )
        console.print(table)
        console.print("[bold]How to fix[/]")
        for rule_id in dict.fromkeys(f.rule_id for f in shown):
            console.print(f"  [bold]{rule_id}[/] {rule(rule_id).remediation}")
    summarised = Counter((f.severity, f.rule_id) for f in findings if f not in shown)
    for (severity, rule_id), count in sorted(summarised.items(), key=lambda kv: -kv[0][0]):
        console.print(
            f"[{_STYLE[severity]}]{severity}[/] {rule_id} x{count}: {rule(rule_id).name} "
            "[dim](details with --format json)[/]"
        )
    _verdict(report, findings, console, fail_on)


def _where(location: Location) -> str:
    """The location with its path relative to the working directory when inside it."""
    relative = os.path.relpath(location.path)
    path = location.path if relative.startswith("..") else relative
    return str(Location(path, location.member, location.offset))


def _verdict(report: Report, findings: list, console: Console, fail_on: Severity) -> None:
    blocking = [f for f in findings if f.severity >= fail_on]
    scanned = len(report.artifacts)
    noun = "file" if scanned == 1 else "files"
    if blocking:
        console.print(
            f"[bold red]{len(blocking)} finding(s) at or above {fail_on}[/] "
            f"in {scanned} {noun} ({len(findings)} in all)."
        )
    else:
        console.print(
            f"[green]No findings at or above {fail_on}[/] in {scanned} {noun} "
            f"({len(findings)} below the threshold)."
        )
