"""`bastion data diff|check`: what changed between two dataset versions, and which rows of a
training set look poisoned."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bastion.cli.common import (
    FailOnOption,
    FormatOption,
    OutOption,
    emit,
    friendly_errors,
    parse_severity,
)
from bastion.data.diff import DiffPolicy, DiffResult, diff_datasets, diff_findings
from bastion.errors import UsageError
from bastion.govern.events import Event, Subject, default_actor
from bastion.govern.ledger import record
from bastion.report import Report

data_app = typer.Typer(
    help="Training data: diff two versions, find poisoned rows.", no_args_is_help=True
)

LabelOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads the annotation at run time
    typer.Option("--label", help="The label column (CSV, Parquet, JSONL)."),
]
KeyOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--key", help="A column that identifies a row across versions."),
]
LedgerOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--ledger", help="Record the result in this ledger (see `bastion ledger`)."),
]


def _fraction(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{name} must be a fraction between 0 and 1, got {value}")
    return value


def diff_event(result: DiffResult) -> Event:
    """The ledger's record of a diff: both dataset digests (order-independent row roots)."""
    return Event(
        kind="data-diff",
        actor=default_actor(),
        subjects=(Subject(result.new.path, result.new.root),),
        parents=(result.old.root,),
        details={
            "old": result.old.to_json(),
            "new": result.new.to_json(),
            **{k: v for k, v in result.metrics().items() if k != "identical"},
        },
    )


@data_app.command("diff")
@friendly_errors
def diff_command(
    old: Annotated[str, typer.Argument(help="The earlier version (file or image folder).")],
    new: Annotated[str, typer.Argument(help="The later version.")],
    label: LabelOption = None,
    key: KeyOption = None,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
    max_changed: Annotated[
        float, typer.Option("--max-changed", help="Changed rows allowed (fraction of OLD).")
    ] = DiffPolicy.max_changed,
    max_label_changes: Annotated[
        float,
        typer.Option("--max-label-changes", help="Relabelled rows allowed (fraction of OLD)."),
    ] = DiffPolicy.max_label_changes,
    max_class_shift: Annotated[
        float, typer.Option("--max-class-shift", help="Change of a class's share allowed.")
    ] = DiffPolicy.max_class_shift,
) -> None:
    """Rows added, removed and modified between OLD and NEW, order-independent, streamed."""
    threshold = parse_severity(fail_on)
    policy = DiffPolicy(
        _fraction(max_changed, "--max-changed"),
        _fraction(max_label_changes, "--max-label-changes"),
        _fraction(max_class_shift, "--max-class-shift"),
    )
    result = diff_datasets(old, new, label=label, key=key)
    findings = diff_findings(result, policy)
    if ledger is not None:
        record(ledger, [diff_event(result)])
    report = Report(
        f"data diff {old} {new}",
        findings,
        artifacts=[result.details()],
        metrics=result.metrics(),
    )
    emit(report, fmt, out, threshold)
