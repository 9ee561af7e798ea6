"""`bastion scan PATH...`: is this model file safe to load?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

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
from bastion.findings import Severity
from bastion.report import Report
from bastion.supplychain.scan import ScanResult, scan

if TYPE_CHECKING:
    from bastion.govern.events import Event


def scan_report(result: ScanResult, command: str) -> Report:
    artifacts = [
        {"path": f.path, "formats": f.formats, "size": f.size, "seconds": round(f.seconds, 6)}
        for f in result.files
    ]
    metrics = {"files": len(result.files), "bytes": sum(f.size for f in result.files)}
    return Report(command, result.findings, artifacts, metrics)


def scan_event(result: ScanResult) -> Event:
    """The ledger's record of a scan: each file with its digest, and counts by severity."""
    from bastion.govern.events import Event, Subject, default_actor, file_digest

    counts = {str(s): sum(f.severity == s for f in result.findings) for s in Severity}
    return Event(
        kind="scan",
        actor=default_actor(),
        subjects=tuple(Subject(f.path, file_digest(f.path)) for f in result.files),
        details={"findings": counts, "files": len(result.files)},
    )


@friendly_errors
def scan_command(
    paths: Annotated[
        list[str], typer.Argument(help="Model files or folders (scanned recursively).")
    ],
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    trust: Annotated[
        Optional[list[str]],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--trust", help="Treat classes from this package as trusted (low)."),
    ] = None,
    jobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--jobs", "-j", help="Processes to scan with (default: all cores)."),
    ] = None,
    ledger: LedgerOption = None,
) -> None:
    """Scan model files for code that would run on load, by content, never by name."""
    threshold = parse_severity(fail_on)
    result = scan(*paths, trusted=trust or (), jobs=jobs)
    if ledger is not None:
        from bastion.govern.ledger import record  # only when asked: it loads the crypto stack

        record(ledger, [scan_event(result)])
    emit(scan_report(result, "scan " + " ".join(paths)), fmt, out, threshold)
