"""Supply chain: known vulnerabilities in the project's Python packages (`bastion deps`).

Offline from the OSV export folder in `[supply_chain] osv_db`, or online through pip-audit
only when `[supply_chain] online = true`; with neither the check does not apply, so an audit
never reaches the network unless the configuration says so."""

from __future__ import annotations

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.audit_checks._packages import package_file, packages, shown
from bastion.config import AuditConfig
from bastion.findings import Threat
from bastion.supplychain.deps import (
    audit_offline,
    findings,
    load_osv_db,
    recheck_command,
    run_pip_audit,
)


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    supply = config.supply_chain
    listing = package_file(config)
    where = str(listing) if listing else "environment"
    osv_db = config.resolve(supply.osv_db) if supply.osv_db else None
    recheck = _recheck(config)
    metrics: dict[str, object] = {"source": "osv-db" if osv_db else "pip-audit",
                                  "packages_from": where}
    if osv_db is not None:
        db = load_osv_db(osv_db)  # a malformed advisory stops the check with its name
        listed = packages(config)
        vulnerabilities, unpinned = audit_offline(listed, db)
        metrics.update(advisories=db.advisories,
                       packages_audited=len(listed.packages) - len(unpinned))
    else:
        vulnerabilities, unpinned = run_pip_audit(str(listing) if listing else None), []
    metrics.update(vulnerabilities=len(vulnerabilities),
                   vulnerable_packages=len({v.package for v in vulnerabilities}),
                   unpinned=len(unpinned))
    return CheckResult(
        findings=findings(vulnerabilities, unpinned, where, recheck),
        metrics=metrics,
        artifacts=[{"path": where}] if listing else [],
    )


def _recheck(config: AuditConfig) -> str:
    """The `bastion deps` command that repeats this check; `bastion deps` reads no lock
    files, so a lock file is re-checked by the audit."""
    supply = config.supply_chain
    if supply.lock:
        return "bastion audit --only deps"
    requirements = shown(config, config.resolve(supply.requirements)) \
        if supply.requirements else None
    osv_db = shown(config, config.resolve(supply.osv_db)) if supply.osv_db else None
    return recheck_command(requirements, osv_db)


def _applies(config: AuditConfig) -> bool:
    return bool(config.supply_chain.osv_db or config.supply_chain.online)


CHECK = Check(
    name="deps",
    title="Dependency vulnerabilities",
    threats=(Threat.SUPPLY_CHAIN,),
    applies=_applies,
    run=_run,
)
