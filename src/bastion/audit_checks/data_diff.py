"""Data diff: has the training or test data changed since the last audit, and how?

Each declared dataset gets `bastion data diff`'s order-independent root (and its 256 bucket
digests, shortened). The audit's ledger entry records them (`record_audit` copies this
check's `record` metric), so the next audit with the same ledger finds the last audit of the
same project that recorded the same dataset role (`train`, `test`) and compares: an equal
root means the data is unchanged since that audit; a different one is a finding saying how
many buckets differ. When the dataset declares `baseline` (a copy of the version audited
then), the check verifies that the copy is what the ledger recorded and runs the full row
diff against it: rows added, removed and modified, label flips and class-balance shifts
against `[threat_model.data_diff]`. The first audit with a ledger establishes the baseline.
"""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path
from typing import Any

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import AuditConfig, DataSet
from bastion.data.rules import CLASS_SHIFT, LABELS_CHANGED, ROWS_CHANGED, SCHEMA_CHANGED
from bastion.errors import InputError
from bastion.findings import Finding, Location, Rule, Severity, Threat, register

BUCKET_HEX = 16  # 8 bytes of each bucket digest: enough to tell which buckets changed
ROLES = ("train", "test")

DATA_CHANGED = register(Rule(
    "BST-AUD-DIFF-001",
    "audit-data-changed-since-last-audit",
    "The declared dataset is not the one the last audit recorded in the ledger: rows were "
    "added, removed, relabelled or edited since. Unreviewed changes to training data are how "
    "poisoned rows get in, and every result of the last audit was about the old data.",
    "Review what changed against the audited version: keep a copy of it and declare it as "
    "`baseline` under the dataset's section in bastion.toml, so the audit lists the changed "
    "rows, or run `bastion data diff OLD NEW --label COLUMN --ledger LEDGER` yourself.",
    Threat.DATA_POISONING, Severity.MEDIUM, ("ML02", "AML.T0020"),
))
# The rules this check reports, imported when the registry loads the check, so that they are
# registered in the process that renders the report too (the check may run elsewhere).
RULES = (DATA_CHANGED, ROWS_CHANGED, LABELS_CHANGED, CLASS_SHIFT, SCHEMA_CHANGED)


def _declared(config: AuditConfig) -> dict[str, DataSet]:
    return {role: s for role in ROLES if (s := getattr(config.data, role)) is not None}


def _applies(config: AuditConfig) -> bool:
    return config.ledger is not None and bool(_declared(config))


def _digest(config: AuditConfig, declared: DataSet, path: str, workdir: Path) -> Any:
    from bastion.data.diff import digest_dataset
    from bastion.data.rowstream import open_rows

    with tempfile.TemporaryDirectory(prefix="digest-", dir=workdir) as spill:
        rows = open_rows(config.resolve(path), label=declared.label, key=declared.key)
        return digest_dataset(rows, Path(spill))


def _record(digest: Any) -> dict[str, Any]:
    """What the ledger keeps of a dataset: its root and shortened bucket digests."""
    return {"path": digest.path, "rows": digest.rows, "root": digest.root,
            "buckets": [node.hex()[:BUCKET_HEX] for node in digest.tree[0]]}


def last_audits(config: AuditConfig) -> dict[str, tuple[int, dict[str, Any]]]:
    """Per role, the ledger index and record of the last audit of this project that
    recorded that dataset."""
    from bastion.govern.ledger import Ledger

    found: dict[str, tuple[int, dict[str, Any]]] = {}
    with Ledger.open(config.resolve(config.ledger.path)) as ledger:
        for entry in reversed(ledger.find(kind="assess")):
            details = entry.event.get("details", {})
            if details.get("audit") != config.project.name:
                continue
            for role, record in (details.get("datasets") or {}).items():
                found.setdefault(role, (entry.index, record))
    return found


def diff_command(config: AuditConfig, declared: DataSet, old: str) -> str:
    parts = ["bastion", "data", "diff", old, str(config.resolve(declared.path))]
    if declared.label:
        parts += ["--label", declared.label]
    if declared.key:
        parts += ["--key", declared.key]
    parts += ["--ledger", str(config.resolve(config.ledger.path))]
    return shlex.join(parts)


def _changed_buckets(old: dict[str, Any], new: dict[str, Any]) -> int | None:
    before, after = old.get("buckets"), new["buckets"]
    if not isinstance(before, list) or len(before) != len(after):
        return None
    return sum(a != b for a, b in zip(before, after, strict=True))


def _row_diff(config: AuditConfig, role: str, declared: DataSet, since: int,
              recorded: dict[str, Any], workdir: Path) -> tuple[list[Finding], dict[str, Any]]:
    """The full diff against the declared baseline, which must be the audited version."""
    from bastion.data.diff import DiffPolicy, diff_datasets, diff_findings

    baseline = config.resolve(declared.baseline)
    result = diff_datasets(baseline, config.resolve(declared.path), label=declared.label,
                           key=declared.key, workdir=workdir)
    if result.old.root != recorded.get("root"):
        raise InputError(f"data.{role}.baseline {baseline} is not the data audited in ledger "
                         f"entry #{since} (root {result.old.root}, recorded "
                         f"{recorded.get('root')}): declare the file audited then")
    limits = config.threat_model.data_diff
    policy = DiffPolicy(limits.max_changed, limits.max_label_changes, limits.max_class_shift)
    return diff_findings(result, policy), result.metrics()


def _compare(config: AuditConfig, role: str, declared: DataSet, current: dict[str, Any],
             previous: tuple[int, dict[str, Any]], workdir: Path
             ) -> tuple[list[Finding], dict[str, Any]]:
    since, recorded = previous
    if recorded.get("root") == current["root"]:
        return [], {"status": f"unchanged since audit #{since}", "since_audit": since}
    buckets = _changed_buckets(recorded, current)
    summary: dict[str, Any] = {"status": f"changed since audit #{since}", "since_audit": since,
                               "buckets_changed": buckets, "old_rows": recorded.get("rows"),
                               "new_rows": current["rows"]}
    findings: list[Finding] = []
    if declared.baseline is not None:
        findings, summary["diff"] = _row_diff(config, role, declared, since, recorded, workdir)
        counts = summary["diff"]
        what = (f"{counts['added']} rows added, {counts['removed']} removed, "
                f"{counts['modified']} modified ({counts['label_changes']} relabelled)")
        old = str(config.resolve(declared.baseline))
    else:
        what = (f"{buckets} of 256 buckets differ" if buckets is not None else "root differs")
        what += f"; {recorded.get('rows')} -> {current['rows']} rows"
        old = "OLD"
    command = diff_command(config, declared, old)
    changed = DATA_CHANGED.finding(
        f"The {role} data changed since audit #{since}: {what}",
        Location(current["path"]),
        evidence={"dataset": role, "since_audit": since, "recorded_root": recorded.get("root"),
                  "root": current["root"], **{k: v for k, v in summary.items()
                                              if k not in ("status", "since_audit")}},
        remediation=f"{DATA_CHANGED.remediation} For this project: `{command}`"
        + ("" if declared.baseline else f" with OLD the version audited in #{since}") + ".",
    )
    return [changed, *findings], summary


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    ctx.out.mkdir(parents=True, exist_ok=True)
    previous = last_audits(config)
    result = CheckResult(metrics={"datasets": {}, "record": {}})
    for role, declared in _declared(config).items():
        current = _record(_digest(config, declared, declared.path, ctx.out))
        result.metrics["record"][role] = current
        result.artifacts.append({"path": current["path"], "kind": "dataset",
                                 "rows": current["rows"], "root": current["root"]})
        if role in previous:
            findings, summary = _compare(config, role, declared, current, previous[role],
                                         ctx.out)
            result.findings.extend(findings)
        else:
            summary = {"status": "first audit of this dataset: baseline recorded"}
        result.metrics["datasets"][role] = {"path": current["path"], "root": current["root"],
                                            "rows": current["rows"], **summary}
    return result


CHECK = Check(
    name="data_diff",
    title="Changes to the data since the last audit",
    threats=(Threat.DATA_POISONING,),
    applies=_applies,
    run=_run,
)
