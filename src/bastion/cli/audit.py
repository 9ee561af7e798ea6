"""`bastion audit`: every applicable check on a model project, one report, one gate."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.spinner import Spinner
from rich.table import Table

from bastion.cli.common import SeedOption, friendly_errors, parse_severity
from bastion.errors import InputError

if TYPE_CHECKING:
    from bastion.audit import AuditResult

FORMATS = ("html", "json", "sarif", "md")
SUFFIX = {"html": "html", "json": "json", "sarif": "sarif", "md": "md"}
_STATUS_STYLE = {"ran": "green", "error": "bold red", "not applicable": "dim", "skipped": "dim",
                 "queued": "", "running": "cyan"}


def parse_formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        wrong = ", ".join(unknown) or repr(text)
        raise typer.BadParameter(
            f"unknown format {wrong} (expected some of: {', '.join(FORMATS)})"
        )
    return list(dict.fromkeys(formats))


def _names(values: list[str] | None) -> list[str]:
    """--only/--skip take comma-separated names and may be repeated."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


class LiveProgress:
    """A table of checks that updates as they queue, run and finish."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[str, tuple[str, float, float]] = {}  # name -> status, started, seconds
        self.live = Live(console=console, refresh_per_second=8, transient=False,
                         get_renderable=self.render)

    def __call__(self, name: str, status: str, seconds: float) -> None:
        started = time.monotonic() if status == "running" else self.rows.get(name, ("", 0, 0))[1]
        self.rows[name] = (status, started, seconds)

    def render(self) -> Table:
        table = Table(title="bastion audit", title_justify="left", show_edge=False)
        table.add_column("check")
        table.add_column("status")
        table.add_column("time", justify="right")
        for name, (status, started, seconds) in self.rows.items():
            if status == "running":
                elapsed = time.monotonic() - started
                table.add_row(name, Spinner("dots", text=" running"), f"{elapsed:.1f} s")
            else:
                shown = f"{seconds:.2f} s" if status in ("ran", "error") else ""
                table.add_row(name, f"[{_STATUS_STYLE.get(status, '')}]{status}[/]", shown)
        return table

    def __enter__(self) -> LiveProgress:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()
        self.console.line()


def print_summary(result: AuditResult, console: Console, reports: dict[str, Path]) -> None:
    from bastion.report.html import shown_path

    scores = Table(title="Score per threat", title_justify="left", show_edge=False)
    for column in ("threat", "score", "grade", "findings"):
        scores.add_column(column)
    for s in result.scores.values():
        shown = "not assessed" if s.score is None else str(s.score)
        scores.add_row(s.threat.value, shown, s.grade, str(sum(s.findings.values())))
    parts: list = [scores]
    blocking = sorted(result.blocking, key=lambda f: -f.severity)
    if blocking:
        table = Table(title="Findings that fail the gate", title_justify="left", show_edge=False)
        for column in ("severity", "rule", "where", "finding"):
            table.add_column(column, overflow="fold")
        root = os.path.dirname(result.config_path) if result.config_path else None
        for f in blocking:
            where = shown_path(f.location.path, root)
            table.add_row(str(f.severity), f.rule_id, escape(where), escape(f.title))
        parts.append(table)
    console.print(Group(*parts))
    for fmt, path in reports.items():
        console.print(f"{fmt} report: {path}", soft_wrap=True)
    if result.ledger_index is not None:
        console.print(f"recorded in the ledger as entry {result.ledger_index}")
    if result.passed:
        console.print(f"[green]Gate passed[/]: no finding at or above {result.fail_on} "
                      f"({len(result.findings)} below it).")
    else:
        console.print(f"[bold red]Gate failed[/]: {len(result.blocking)} finding(s) at or above "
                      f"the threshold ({len(result.findings)} in all).")


def audit_with_result(
    config_path: str,
    out: str,
    formats: list[str] = list(FORMATS),  # noqa: B006 - never mutated
    *,
    fail_on: str | None = None,
    only: list[str] | None = None,
    skip: list[str] | None = None,
    ray: str | None = None,
    jobs: int | None = None,
    seed: int = 0,
    console: Console | None = None,
) -> tuple[AuditResult, dict[str, Path]]:
    """Run the audit with live progress, write the reports, record the audit in the ledger
    and print the summary. Returns the result and the report files by format."""
    from bastion.audit import record_audit, run_audit, to_report
    from bastion.config import load_config
    from bastion.fsutil import atomic_write
    from bastion.report import render
    from bastion.report.html import to_html
    from bastion.report.markdown import to_markdown

    console = console or Console(highlight=False)
    threshold = parse_severity(fail_on) if fail_on else None
    config = load_config(config_path)
    if Path(out).exists() and not Path(out).is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    command = shlex.join(["bastion", "audit", "--config", config_path, "--out", out,
                          "--format", ",".join(formats),
                          *(["--fail-on", fail_on] if fail_on else []),
                          *(["--only", ",".join(only)] if only else []),
                          *(["--skip", ",".join(skip)] if skip else []),
                          *(["--ray", ray] if ray else [])])
    with LiveProgress(console) as progress:
        result = run_audit(config, out=out, only=only or (), skip=skip or (), fail_on=threshold,
                           jobs=jobs, ray_address=ray, seed=seed, progress=progress)
    report = to_report(result, command)
    texts = {
        "html": lambda: to_html(result, command),
        "json": lambda: render(report, "json"),
        "sarif": lambda: render(report, "sarif"),
        "md": lambda: to_markdown(result, command, report_link="audit.html"
                                  if "html" in formats else None),
    }
    reports = {}
    for fmt in formats:
        reports[fmt] = atomic_write(Path(out) / f"audit.{SUFFIX[fmt]}", texts[fmt]())
    record_audit(config, result, reports)
    print_summary(result, console, reports)
    return result, reports


@friendly_errors
def audit_command(
    config: Annotated[
        str, typer.Option("--config", "-c", help="The project's bastion.toml.")
    ] = "bastion.toml",
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for the reports.")
    ] = "bastion-report",
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="Comma-separated: html, json, sarif, md.")
    ] = "html,json,sarif,md",
    fail_on: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--fail-on", help="Fail the gate at this severity (default: the policy's)."),
    ] = None,
    only: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--only", help="Run only these checks (comma-separated, repeatable)."),
    ] = None,
    skip: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--skip", help="Leave out these checks (comma-separated, repeatable)."),
    ] = None,
    ray: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--ray", help="Run checks as Ray tasks: a cluster address, 'auto', or "
                     "'local' to start Ray on this machine."),
    ] = None,
    jobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--jobs", "-j", help="Checks run at once (default: all cores)."),
    ] = None,
    seed: SeedOption = 0,
) -> None:
    """Audit a model project end to end: run every applicable check, write one report in
    each format, record the audit in the ledger and exit by the policy (0 pass, 1 fail)."""
    formats = parse_formats(fmt)
    result, _ = audit_with_result(config, out, formats, fail_on=fail_on, only=_names(only),
                                  skip=_names(skip), ray=ray, jobs=jobs, seed=seed)
    raise typer.Exit(0 if result.passed else 1)
