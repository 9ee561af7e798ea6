"""`bastion audit`: configuration -> applicable checks -> findings -> ledger -> report -> gate.

Checks are independent, so they run in parallel: in worker processes by default, or as Ray
tasks on a cluster (`ray_address`). A check that fails to run becomes a finding, never a
silent pass; a check the policy requires that did not run fails the gate.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bastion.audit_checks import Check, CheckContext, CheckResult, registry
from bastion.config import AuditConfig
from bastion.errors import BastionError, InputError, UsageError
from bastion.findings import Finding, Location, Rule, Severity, Threat, register

REQUIRED_NOT_RUN = register(Rule(
    "BST-AUD-001",
    "audit-required-check-not-run",
    "The policy in bastion.toml requires this check, but it did not run (not installed, "
    "not applicable to the configuration, or left out with --only/--skip), so the audit "
    "cannot vouch for what it covers.",
    "Give the check what it needs in bastion.toml (the evidence says why it did not run), "
    "or remove it from [policy] required; re-run `bastion audit`.",
    Threat.DOCUMENTATION, Severity.HIGH, ("ML06", "AML.T0010"),
))
CHECK_FAILED = register(Rule(
    "BST-AUD-002",
    "audit-check-failed",
    "A check stopped with an error, so what it covers was not assessed. An audit never "
    "reports a failed check as clean.",
    "Fix the cause named in the evidence (usually a file the check could not use) and re-run "
    "`bastion audit --only CHECK`.",
    Threat.DOCUMENTATION, Severity.HIGH, ("ML06", "AML.T0010"),
))

# The mission's threats in the order the report presents them.
THREATS = (
    Threat.DATA_POISONING, Threat.MODEL_STEALING, Threat.NETWORK, Threat.ADVERSARIAL,
    Threat.PRIVACY, Threat.MODEL_INVERSION, Threat.SUPPLY_CHAIN, Threat.DOCUMENTATION,
)
# Points a threat's score (out of 100) loses per finding, by severity.
PENALTY = {Severity.CRITICAL: 60, Severity.HIGH: 35, Severity.MEDIUM: 15, Severity.LOW: 4,
           Severity.INFO: 0}

RAN, ERROR, NOT_APPLICABLE, SKIPPED = "ran", "error", "not applicable", "skipped"


@dataclass
class Outcome:
    """What happened to one check: its status, time, result and (for ERROR) why."""

    name: str
    title: str
    threats: tuple[Threat, ...]
    status: str
    seconds: float = 0.0
    result: CheckResult = field(default_factory=CheckResult)
    error: str | None = None


@dataclass(frozen=True)
class ThreatScore:
    threat: Threat
    score: int | None  # None: no check for this threat ran
    findings: dict[str, int]
    checks: tuple[str, ...]

    @property
    def grade(self) -> str:
        if self.score is None:
            return "n/a"
        return next(g for floor, g in ((90, "A"), (75, "B"), (60, "C"), (40, "D"), (0, "F"))
                    if self.score >= floor)


@dataclass
class AuditResult:
    project: str
    config_path: str | None
    outcomes: list[Outcome]
    findings: list[Finding]
    check_of: dict[int, str]  # id(finding) -> check name, for per-check thresholds
    thresholds: dict[str, Severity]
    fail_on: Severity
    seconds: float
    backend: str
    scores: dict[Threat, ThreatScore] = field(default_factory=dict)
    ledger_index: int | None = None  # set by record_audit, after the reports are written

    def threshold_for(self, finding: Finding) -> Severity:
        return self.thresholds.get(self.check_of.get(id(finding), ""), self.fail_on)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.severity >= self.threshold_for(f)]

    @property
    def passed(self) -> bool:
        return not self.blocking

    def outcome(self, name: str) -> Outcome:
        return next(o for o in self.outcomes if o.name == name)


Progress = Callable[[str, str, float], None]  # (check name, status, seconds)


def _quiet(name: str, status: str, seconds: float) -> None:
    """The default progress callback: say nothing."""


def select(
    checks: dict[str, Check], only: Iterable[str] = (), skip: Iterable[str] = ()
) -> tuple[list[str], list[str]]:
    """Names to consider and names left out by --only/--skip; unknown names are refused."""
    only, skip = list(only), list(skip)
    for name in only + skip:
        if name not in checks:
            available = ", ".join(sorted(checks))
            raise UsageError(f"unknown check {name!r} (available: {available})")
    chosen = [n for n in checks if (not only or n in only) and n not in skip]
    return chosen, [n for n in checks if n not in chosen]


def execute(name: str, config: AuditConfig, ctx: CheckContext) -> tuple[CheckResult, str | None]:
    """Run one check by name (in this process, a worker process or a Ray worker); an error
    becomes the second element, never an exception, so one check cannot sink the audit."""
    check = registry()[name]
    try:
        return check.run(config, ctx), None
    except BastionError as exc:
        return CheckResult(), exc.message
    except Exception as exc:  # a bug in a check must still be reported, with where it was
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        return CheckResult(), f"{type(exc).__name__}: {exc} (at {where})"


def _timed(name: str, config: AuditConfig, ctx: CheckContext) -> tuple[CheckResult, str | None,
                                                                       float]:
    started = time.perf_counter()
    result, error = execute(name, config, ctx)
    return result, error, time.perf_counter() - started


# forkserver, not fork: a forked worker inherits OpenMP's state from a parent that already ran
# scikit-learn or torch, and its first KMeans or matrix product can then hang on a lock.
START_METHOD = "forkserver"


def _in_process(names: list[str], config: AuditConfig, contexts: dict[str, CheckContext],
                jobs: int, progress: Progress) -> Iterator[tuple[str, tuple]]:
    if jobs <= 1 or len(names) <= 1:
        for name in names:
            progress(name, "running", 0.0)
            yield name, _timed(name, config, contexts[name])
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context(START_METHOD if START_METHOD in methods else None)
    waiting = list(names)
    with ProcessPoolExecutor(min(jobs, len(names)), mp_context=context) as pool:
        pending: dict[Future, str] = {}
        while waiting or pending:
            while waiting and len(pending) < jobs:  # one check per free worker
                name = waiting.pop(0)
                try:
                    pending[pool.submit(_timed, name, config, contexts[name])] = name
                except BrokenProcessPool as exc:
                    yield name, (CheckResult(), f"worker process died: {exc}", 0.0)
                    continue
                progress(name, "running", 0.0)
            if not pending:
                continue
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool as exc:  # the worker died (killed, out of memory)
                    outcome = (CheckResult(), f"worker process died: {exc}", 0.0)
                yield name, outcome


def _connect_ray(address: str, jobs: int) -> bool:
    """Join the cluster at `address` ("local": start one here with `jobs` CPUs). Returns
    whether this call started Ray (and so must shut it down)."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package (pip install 'bastion-ml[ray]')") from None
    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                               "configure_logging": False}
    try:
        if address == "local":
            ray.init(num_cpus=max(1, jobs), **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"cannot join the Ray cluster at {address}: {exc}") from None
    return True


def _on_ray(names: list[str], config: AuditConfig, contexts: dict[str, CheckContext],
            progress: Progress) -> Iterator[tuple[str, tuple]]:
    import ray

    remote = ray.remote(_timed)
    pending = {}
    for name in names:
        pending[remote.remote(name, config, contexts[name])] = name
        progress(name, "running", 0.0)
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            name = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the task or its worker failed in Ray
                outcome = (CheckResult(), f"Ray task failed: {type(exc).__name__}", 0.0)
            yield name, outcome


def scores(outcomes: list[Outcome]) -> dict[Threat, ThreatScore]:
    """A score out of 100 per threat: 100 less a penalty per finding by severity; None for a
    threat no check assessed."""
    table = {}
    for threat in THREATS:
        ran = [o for o in outcomes if threat in o.threats and o.status == RAN]
        found = [f for o in outcomes for f in o.result.findings if f.threat == threat]
        counts = {str(s): sum(f.severity == s for f in found) for s in Severity}
        score = max(0, 100 - sum(PENALTY[f.severity] for f in found)) if ran or found else None
        table[threat] = ThreatScore(threat, score, counts, tuple(o.name for o in ran))
    return table


def _policy_findings(config: AuditConfig, outcomes: list[Outcome], where: str) -> list[Finding]:
    findings = []
    status = {o.name: o for o in outcomes}
    for name in config.policy.required:
        outcome = status.get(name)
        if outcome is not None and outcome.status in (RAN, ERROR):
            continue
        reason = outcome.status if outcome else "no such check is installed"
        findings.append(REQUIRED_NOT_RUN.finding(
            f"Required check {name!r} did not run ({reason})",
            Location(where, "policy.required"), evidence={"check": name, "reason": reason},
        ))
    return findings


def _error_finding(outcome: Outcome, where: str) -> Finding:
    return CHECK_FAILED.finding(
        f"Check {outcome.name!r} failed: {outcome.error}",
        Location(where, outcome.name),
        evidence={"check": outcome.name, "error": outcome.error},
        remediation=f"Fix the cause ({outcome.error}) and re-run "
        f"`bastion audit --only {outcome.name}`.",
    )


def _with_recheck(finding: Finding, check: str) -> Finding:
    """Every finding names the Bastion command that re-checks it; a check's rule that does
    not gets the audit's own."""
    if "`bastion " in finding.remediation:
        return finding
    text = finding.remediation.rstrip()
    separator = " " if text.endswith(".") else ". "
    return dataclasses.replace(
        finding, remediation=f"{text}{separator}Re-check with `bastion audit --only {check}`."
    )


def check_ledger(config: AuditConfig) -> Path | None:
    """The ledger to record in; checked before any check runs, so a typo costs nothing."""
    if config.ledger is None:
        return None
    from bastion.govern.ledger import Ledger

    path = config.resolve(config.ledger.path)
    with Ledger.open(path):
        return path


def run_audit(
    config: AuditConfig,
    *,
    out: str | os.PathLike[str],
    only: Iterable[str] = (),
    skip: Iterable[str] = (),
    fail_on: Severity | None = None,
    jobs: int | None = None,
    ray_address: str | None = None,
    seed: int = 0,
    progress: Progress = _quiet,
) -> AuditResult:
    """Run every applicable, selected check and gather the outcome. Nothing is written
    except what checks put under `out`; `record_audit` and the renderers do the rest."""
    started = time.perf_counter()
    checks = registry()
    chosen, left_out = select(checks, only, skip)
    jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:
        raise UsageError(f"jobs must be at least 1, not {jobs}")
    check_ledger(config)
    outcomes = {n: Outcome(n, c.title, c.threats, SKIPPED) for n, c in checks.items()}
    runnable = []
    for name in chosen:
        if checks[name].applies(config):
            runnable.append(name)
            progress(name, "queued", 0.0)
        else:
            outcomes[name].status = NOT_APPLICABLE
            progress(name, NOT_APPLICABLE, 0.0)
    for name in left_out:
        progress(name, SKIPPED, 0.0)
    where = str(config.source or config.root / "bastion.toml")
    if not runnable:
        raise InputError(f"{where}: nothing to audit: no selected check applies (add [model] "
                         "or [serving], or change --only/--skip)")

    use_ray = ray_address is not None
    contexts = {n: CheckContext(Path(out) / "checks" / n, seed, use_ray) for n in runnable}
    started_ray = _connect_ray(ray_address, jobs) if use_ray else False
    try:
        stream = (_on_ray(runnable, config, contexts, progress) if use_ray
                  else _in_process(runnable, config, contexts, jobs, progress))
        for name, (result, error, seconds) in stream:
            outcome = outcomes[name]
            outcome.result, outcome.error, outcome.seconds = result, error, seconds
            outcome.status = ERROR if error else RAN
            progress(name, outcome.status, seconds)
    finally:
        if started_ray:
            import ray

            ray.shutdown()

    ordered = [outcomes[n] for n in checks]
    findings: list[Finding] = []
    check_of: dict[int, str] = {}
    for outcome in ordered:
        found = list(outcome.result.findings)
        if outcome.status == ERROR:
            found.append(_error_finding(outcome, where))
        found = [_with_recheck(f, outcome.name) for f in found]
        for finding in found:
            check_of[id(finding)] = outcome.name
        findings.extend(found)
    findings.extend(_policy_findings(config, ordered, where))
    policy = config.policy
    return AuditResult(
        project=config.project.name,
        config_path=str(config.source) if config.source else None,
        outcomes=ordered,
        findings=findings,
        check_of=check_of,
        thresholds=dict(policy.thresholds),
        fail_on=fail_on if fail_on is not None else policy.fail_on,
        seconds=time.perf_counter() - started,
        backend=f"ray ({ray_address})" if use_ray else f"processes ({jobs})",
        scores=scores(ordered),
    )


def _subjects(config: AuditConfig) -> list[Any]:
    from bastion.govern.events import Subject, file_digest

    files = [*config.model_paths(), *config.data_paths()]
    if config.source is not None:
        files.append(config.source)
    named = {}
    for path in files:
        if path.is_file():
            named[str(path)] = Subject(str(path), file_digest(path))
    return list(named.values())


def record_audit(config: AuditConfig, result: AuditResult, reports: dict[str, Path]) -> int | None:
    """Append the audit to the configured ledger: what was audited (model, data and
    configuration digests), each check's status, the scores, the gate and the reports."""
    if config.ledger is None:
        return None
    from bastion.govern.events import Event, default_actor, file_digest
    from bastion.govern.ledger import record

    details = {
        "audit": result.project,
        "gate": "pass" if result.passed else "fail",
        "fail_on": str(result.fail_on),
        "checks": {o.name: o.status for o in result.outcomes},
        "findings": {str(s): sum(f.severity == s for f in result.findings) for s in Severity},
        "scores": {t.value: s.score for t, s in result.scores.items()},
        "reports": {fmt: {"path": str(p), "digest": file_digest(p)} for fmt, p in reports.items()},
    }
    # The data_diff check's dataset roots: what the next audit compares its data against.
    data = next((o for o in result.outcomes if o.name == "data_diff" and o.status == RAN), None)
    if data is not None and data.result.metrics.get("record"):
        details["datasets"] = data.result.metrics["record"]
    event = Event(kind="assess", actor=default_actor(), subjects=tuple(_subjects(config)),
                  details=details)
    key = config.resolve(config.ledger.key) if config.ledger.key else None
    indices, _ = record(config.resolve(config.ledger.path), [event], key=key)
    result.ledger_index = indices[0]
    return indices[0]


def audit_metrics(result: AuditResult) -> dict[str, Any]:
    """The audit's own numbers for the JSON report: gate, scores, and each check."""
    return {
        "project": result.project,
        "config": result.config_path,
        "backend": result.backend,
        "seconds": round(result.seconds, 3),
        "gate": {
            "passed": result.passed,
            "fail_on": str(result.fail_on),
            "thresholds": {k: str(v) for k, v in result.thresholds.items()},
            "blocking": len(result.blocking),
        },
        "scores": {
            t.value: {"score": s.score, "grade": s.grade, "checks": list(s.checks)}
            for t, s in result.scores.items()
        },
        "checks": {
            o.name: {
                "status": o.status,
                "seconds": round(o.seconds, 3),
                "findings": len(o.result.findings),
                "metrics": o.result.metrics,
                **({"error": o.error} if o.error else {}),
            }
            for o in result.outcomes
        },
    }


def to_report(result: AuditResult, command: str) -> Any:
    """The audit as a generic `Report`, which the JSON and SARIF renderers take."""
    from bastion.report import Report

    artifacts: dict[str, dict[str, Any]] = {}
    for outcome in result.outcomes:
        for artifact in outcome.result.artifacts:
            artifacts.setdefault(artifact["path"], artifact)
    return Report(command, list(result.findings), list(artifacts.values()), audit_metrics(result))
