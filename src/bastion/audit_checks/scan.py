"""Supply chain: every model file and downloaded artifact scanned for code that would run on
load (`bastion scan`)."""

from __future__ import annotations

from collections import Counter

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import AuditConfig
from bastion.findings import Threat
from bastion.supplychain.scan import scan


def _applies(config: AuditConfig) -> bool:
    return bool(config.model_paths() or config.artifact_paths())


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    result = scan(*config.model_paths(), *config.artifact_paths(), jobs=1)
    formats = Counter(fmt for f in result.files for fmt in f.formats or ["unknown"])
    return CheckResult(
        findings=result.findings,
        metrics={
            "files": len(result.files),
            "bytes": sum(f.size for f in result.files),
            "formats": dict(sorted(formats.items())),
        },
        artifacts=[{"path": f.path, "formats": f.formats, "size": f.size} for f in result.files],
    )


CHECK = Check(
    name="scan",
    title="Model files and artifacts: code that runs on load",
    threats=(Threat.SUPPLY_CHAIN,),
    applies=_applies,
    run=_run,
)
