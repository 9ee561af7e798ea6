"""`bastion deps`: known vulnerabilities in the Python dependencies, online (pip-audit) or
offline from an OSV export folder."""

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
from bastion.findings import Severity
from bastion.govern.events import Event, Subject, default_actor, file_digest
from bastion.govern.ledger import record
from bastion.report import Report
from bastion.supplychain.deps import (
    audit_offline,
    choose_source,
    findings,
    load_osv_db,
    recheck_command,
    run_pip_audit,
)
from bastion.supplychain.pydeps import from_environment, from_requirements


@friendly_errors
def deps_command(
    requirements: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--requirements", "-r", help="Requirements file (default: this environment)."),
    ] = None,
    osv_db: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--osv-db", help="Folder of OSV advisories (an unzipped OSV export)."),
    ] = None,
    offline: Annotated[
        bool, typer.Option("--offline", help="Never use the network (needs --osv-db).")
    ] = False,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Check dependencies for published vulnerabilities (OSV / PyPI advisories)."""
    threshold = parse_severity(fail_on)
    source = choose_source(offline, osv_db)
    recheck = recheck_command(requirements, osv_db)
    where = requirements or "environment"
    if source == "osv":
        packages = from_requirements(requirements) if requirements else from_environment()
        vulnerabilities, unpinned = audit_offline(packages, load_osv_db(osv_db))
        audited = len(packages.packages) - len(unpinned)
    else:
        vulnerabilities, unpinned = run_pip_audit(requirements), []
        audited = None
    found = findings(vulnerabilities, unpinned, where, recheck)
    metrics = {
        "source": "osv-db" if source == "osv" else "pip-audit",
        "vulnerabilities": len(vulnerabilities),
        "vulnerable_packages": len({v.package for v in vulnerabilities}),
        "unpinned": len(unpinned),
    }
    if audited is not None:
        metrics["packages_audited"] = audited
    if ledger is not None:
        record(ledger, [_deps_event(requirements, found, metrics)])
    emit(Report(f"deps {where}", found, [{"path": where}], metrics), fmt, out, threshold)


def _deps_event(requirements: str | None, found: list, metrics: dict) -> Event:
    counts = {str(s): sum(f.severity == s for f in found) for s in Severity}
    subjects = (Subject(requirements, file_digest(requirements)),) if requirements else ()
    return Event(
        kind="scan",
        actor=default_actor(),
        subjects=subjects,
        details={"check": "deps", "findings": counts, **metrics},
    )
