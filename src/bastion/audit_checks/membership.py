"""Privacy: can an attacker tell which records trained the model? (`bastion assess membership`)

The training data are the members and the test data the non-members. The attack of
`[threat_model.membership]` (offline RMIA by default) trains its reference models through
`ctx.map`, so under `bastion audit --ray` they train as Ray tasks. The declared limits
`max_auc` and `max_tpr_at_1pct_fpr` are the high rungs of the membership policy; below them
the policy's default medium and low rungs apply.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import numpy as np

from bastion.assess.privacy_rules import MEMBERSHIP_EXPOSURE
from bastion.audit_checks import Check, CheckContext, CheckResult, Plot
from bastion.audit_checks._model import (
    is_torch,
    labelled,
    load_target,
    model_file,
    project_callable,
)
from bastion.config import AuditConfig, Membership
from bastion.errors import InputError
from bastion.findings import Finding, Severity, Threat

# The rules this check reports, imported when the registry loads the check, so that they are
# registered in the process that renders the report too (the check may run elsewhere).
RULES = (MEMBERSHIP_EXPOSURE,)


def _applies(config: AuditConfig) -> bool:
    return (config.model is not None and config.data.train is not None
            and config.data.test is not None and config.threat_model.membership is not None)


def policy(declared: Membership) -> Any:
    """The membership policy with the declared limits as its high rungs; the default medium
    and low rungs stay where they are below those limits."""
    from bastion.assess.membership import MembershipPolicy

    default = MembershipPolicy()

    def ladder(high: float, rungs: tuple[tuple[Severity, float], ...]):
        return ((Severity.HIGH, high),
                *((s, bound) for s, bound in rungs if s < Severity.HIGH and bound < high))

    return MembershipPolicy(auc=ladder(declared.max_auc, default.auc),
                            tpr_at_1pct_fpr=ladder(declared.max_tpr_at_1pct_fpr,
                                                   default.tpr_at_1pct_fpr))


def within_budget(xm, ym, xn, yn, budget: int | None, rng: np.random.Generator):
    """At most `budget` records to query the model with: as many non-members as members
    where the test data allow, drawn at random."""
    if budget is None or budget >= len(xm) + len(xn):
        return xm, ym, xn, yn
    n_non = min(len(xn), budget // 2)
    n_mem = min(len(xm), budget - n_non)
    members = np.sort(rng.choice(len(xm), n_mem, replace=False))
    nonmembers = np.sort(rng.choice(len(xn), n_non, replace=False))
    return xm[members], ym[members], xn[nonmembers], yn[nonmembers]


def _train_fn(config: AuditConfig, declared: Membership, target: Any):
    if declared.train_fn is not None:
        return project_callable(config, declared.train_fn, "threat_model.membership.train_fn")
    if is_torch(target):
        raise InputError("threat_model.membership.train_fn: reference models for a torch model "
                         "need a training function (module:function taking x, y, seed and "
                         "returning a trained model)")
    return None  # scikit-learn: clone and refit


def _recheck(finding: Finding, config: AuditConfig) -> Finding:
    """The rule's generic re-check command with this project's files filled in."""
    files = {"MODEL": model_file(config), "MEMBERS": config.resolve(config.data.train.path),
             "HELD_OUT": config.resolve(config.data.test.path)}
    text = finding.remediation
    for placeholder, path in files.items():
        text = text.replace(placeholder, shlex.quote(str(path)))
    declared = config.threat_model.membership
    label = config.data.train.label
    attack = (f"--label {shlex.quote(label)} " if label else "") + (
        f"--attack {declared.attack} --references {declared.references}")
    text = text.replace("--attack rmia", attack)
    return dataclasses.replace(
        finding, remediation=f"{text} Within the audit: `bastion audit --only membership`.")


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.assess.membership import assess_membership, plot_roc
    from bastion.assess.membership.references import check_reference_budget

    declared = config.threat_model.membership
    target = load_target(config)
    _, xm, ym = labelled(config, "train", target)
    _, xn, yn = labelled(config, "test", target)
    xm, ym, xn, yn = within_budget(xm, ym, xn, yn, declared.query_budget, ctx.rng(1))
    n_classes = int(max(ym.max(), yn.max())) + 1
    check_reference_budget(
        declared.references, np.concatenate([ym, yn]), n_classes,
        hint="lower [threat_model.membership] references (or raise query_budget) or "
             "declare more training and test data",
    )
    assessment = assess_membership(
        target, xm, ym, xn, yn, attacks=declared.attack, references=declared.references,
        train_fn=_train_fn(config, declared, target), map_fn=ctx.map, seed=ctx.seed,
        policy=policy(declared), location=str(model_file(config)),
    )
    ctx.out.mkdir(parents=True, exist_ok=True)
    roc = ctx.out / "membership-roc.png"
    plot_roc(assessment.results, roc)
    result = assessment.results[0]
    caption = (f"{result.attack} against {assessment.n_members} training and "
               f"{assessment.n_nonmembers} test records with {assessment.n_references} "
               "reference models; log-log axes show the low false-positive rates that matter.")
    return CheckResult(
        findings=[_recheck(f, config) for f in assessment.findings],
        metrics={**assessment.metrics(), "max_auc": declared.max_auc,
                 "max_tpr_at_1pct_fpr": declared.max_tpr_at_1pct_fpr, "plot": str(roc)},
        plots=[Plot("Membership inference ROC", "image/png", roc.read_bytes(), caption)],
        artifacts=[{"path": str(roc), "kind": "plot"}],
    )


CHECK = Check(
    name="membership",
    title="Membership inference against the model",
    threats=(Threat.PRIVACY,),
    applies=_applies,
    run=_run,
)
