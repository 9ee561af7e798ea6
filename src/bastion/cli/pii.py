"""`bastion data pii PATH`: personal data in a dataset, per column, with masked examples."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bastion.cli.common import (
    FailOnOption,
    FormatOption,
    LedgerOption,
    OutOption,
    emit,
    friendly_errors,
    parse_severity,
)
from bastion.data.pii import PiiReport, scan_pii
from bastion.govern.events import Event, Subject, default_actor, file_digest
from bastion.govern.ledger import record
from bastion.report import Report


def pii_event(report: PiiReport) -> Event:
    """The ledger's record: the file's digest and how many values of each kind it holds."""
    counts: dict[str, int] = {}
    for hits in report.columns.values():
        for entity, count in hits.counts.items():
            counts[entity] = counts.get(entity, 0) + count
    return Event(
        kind="scan",
        actor=default_actor(),
        subjects=(Subject(report.path, file_digest(report.path)),),
        details={"check": "pii", "rows": report.rows, "pii": counts},
    )


@friendly_errors
def pii_command(
    path: Annotated[str, typer.Argument(help="CSV, Parquet, JSON Lines or text file.")],
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    jobs: Annotated[
        Optional[int],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--jobs", "-j", help="Processes to scan with (default: all cores)."),
    ] = None,
    region: Annotated[
        str, typer.Option("--region", help="Country whose format national phone numbers use.")
    ] = "US",
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", min=1, help="Rows read and scanned at a time.")
    ] = 20_000,
    ledger: LedgerOption = None,
) -> None:
    """Find e-mails, phones, payment cards, IBANs, SSNs, IPs and birth dates in a dataset."""
    threshold = parse_severity(fail_on)
    report = scan_pii(path, jobs=jobs, chunk_rows=chunk_rows, region=region.upper())
    if ledger is not None:
        record(ledger, [pii_event(report)])
    artifacts = [{"path": report.path, "rows": report.rows, "size": report.bytes}]
    emit(Report(f"data pii {path}", report.findings, artifacts, report.metrics()), fmt, out,
         threshold)
