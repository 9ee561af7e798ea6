"""What every command shares: one-line errors with exit code 2, the --format/--out/--fail-on
conventions, and the exit code from findings."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console

from bastion.errors import BastionError
from bastion.findings import Severity
from bastion.fsutil import atomic_write
from bastion.report import FORMATS, Report, render
from bastion.report.table import print_table

F = TypeVar("F", bound=Callable[..., Any])

err_console = Console(stderr=True, highlight=False)


def fail(message: str) -> typer.Exit:
    err_console.print(f"[bold red]bastion: error:[/] {message}", soft_wrap=True)
    return typer.Exit(2)


def friendly_errors(command: F) -> F:
    """Turn BastionError into one clear line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except BastionError as exc:
            raise fail(exc.message) from None

    return wrapper  # type: ignore[return-value]


def parse_severity(text: str) -> Severity:
    try:
        return Severity.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def parse_format(text: str) -> str:
    if text not in FORMATS:
        raise typer.BadParameter(f"unknown format {text!r} (expected one of: {', '.join(FORMATS)})")
    return text


FormatOption = Annotated[
    str, typer.Option("--format", "-f", help="table, json or sarif.", callback=parse_format)
]
FailOnOption = Annotated[
    str, typer.Option("--fail-on", help="Exit 1 when a finding is at or above this severity.")
]
OutOption = Annotated[
    Optional[str], typer.Option("--out", "-o", help="Write the report to this file.")  # noqa: UP045
]
LabelOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--label", help="The label column of CSV, Parquet or JSONL data."),
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for every random choice.")]
ModelFactoryOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--model-factory", help="module:function (or file.py:function) building the "
                 "torch network that a weights file fills."),
]  # fmt: skip
LedgerOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--ledger", help="Record what the command did in this ledger (`bastion ledger`)."),
]


def emit(report: Report, fmt: str, out: str | None, fail_on: Severity) -> None:
    """Print or write the report, then exit 1 if a finding reaches `fail_on`."""
    if fmt == "table":
        if out:
            with open(out, "w", encoding="utf-8") as handle:
                print_table(report, Console(file=handle, width=120), fail_on=fail_on)
        else:
            print_table(report, Console(), fail_on=fail_on)
    else:
        text = render(report, fmt)
        if out:
            atomic_write(out, text)
        else:
            sys.stdout.write(text)
    if any(f.severity >= fail_on for f in report.findings):
        raise typer.Exit(1)


def check_ledger(ledger: str | None) -> None:
    """A missing or foreign --ledger fails before the command does any work or writes."""
    if ledger is not None:
        from bastion.govern.ledger import Ledger

        Ledger.open(ledger).close()


def record_files(ledger: str | None, kind: str, files: list[str], details: dict) -> None:
    """Record one event whose subjects are `files` (those that exist, by content digest)."""
    if ledger is None:
        return
    from bastion.govern.events import Event, default_actor, subject_for_file
    from bastion.govern.ledger import record

    subjects = tuple(subject_for_file(f) for f in files if os.path.isfile(f))
    record(ledger, [Event(kind=kind, actor=default_actor(), subjects=subjects, details=details)])
