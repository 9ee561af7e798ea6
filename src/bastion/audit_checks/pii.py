"""Privacy: personal data in the declared training and test data (`bastion data pii`).

Tables (CSV, Parquet, JSON Lines) and other text files are scanned; NumPy arrays and image
folders hold no text to scan and are listed in the metrics as not scanned.
"""

from __future__ import annotations

from pathlib import Path

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import AuditConfig
from bastion.data.pii.rules import RULES as PII_RULES
from bastion.findings import Threat

NOT_TEXT = (".npz", ".npy")
# The rules this check reports, imported when the registry loads the check, so that they are
# registered in the process that renders the report too (the check may run elsewhere).
RULES = tuple(PII_RULES.values())


def _scannable(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() not in NOT_TEXT


def _applies(config: AuditConfig) -> bool:
    return any(_scannable(p) for p in config.data_paths())


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.data.pii import scan_pii

    result = CheckResult()
    scanned, skipped = {}, []
    for path in dict.fromkeys(config.data_paths()):  # train and test may be one file
        if not _scannable(path):
            skipped.append(str(path))
            continue
        report = scan_pii(path, jobs=1)
        result.findings.extend(report.findings)
        scanned[str(path)] = report.metrics()
        result.artifacts.append({"path": str(path), "kind": "dataset", "rows": report.rows})
    result.metrics = {"files": scanned, "not_scanned": skipped,
                      "findings": len(result.findings)}
    return result


CHECK = Check(
    name="pii",
    title="Personal data in the training and test data",
    threats=(Threat.PRIVACY,),
    applies=_applies,
    run=_run,
)
