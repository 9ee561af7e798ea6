"""Model inversion: what the model reveals about its training data beyond membership
(`bastion assess inversion`).

Runs when `[threat_model.inversion]` asks for it: attribute inference when it names a
`sensitive` column of the (tabular) training data, MIFace class reconstructions when it sets
`reconstruct = true` (a differentiable, torch model). The declared `max_advantage` and
`max_identified` are the high rungs of the inversion policy; below them its default medium
and low rungs apply.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from bastion.assess.privacy_rules import ATTRIBUTE_INFERENCE, CLASS_RECONSTRUCTION
from bastion.audit_checks import Check, CheckContext, CheckResult, Plot
from bastion.audit_checks._model import is_torch, labelled, load_target, model_file
from bastion.config import AuditConfig, Inversion
from bastion.findings import Finding, Severity, Threat

# The rules this check reports, imported when the registry loads the check, so that they are
# registered in the process that renders the report too (the check may run elsewhere).
RULES = (ATTRIBUTE_INFERENCE, CLASS_RECONSTRUCTION)


def _applies(config: AuditConfig) -> bool:
    return (config.model is not None and config.data.train is not None
            and config.threat_model.inversion is not None)


def _ladder(high: float, rungs: tuple[tuple[Severity, float], ...]):
    return ((Severity.HIGH, high),
            *((s, bound) for s, bound in rungs if s < Severity.HIGH and bound < high))


def policy(declared: Inversion) -> Any:
    """The inversion policy with the declared limits as its high rungs."""
    from bastion.assess.inversion import InversionPolicy

    default = InversionPolicy()
    return InversionPolicy(advantage=_ladder(declared.max_advantage, default.advantage),
                           identified=_ladder(declared.max_identified, default.identified))


def _recheck(finding: Finding, config: AuditConfig) -> Finding:
    """The rule's generic re-check command with this project's files filled in."""
    train = config.data.train
    text = finding.remediation.replace("MODEL", shlex.quote(str(model_file(config))))
    text = text.replace("DATA", shlex.quote(str(config.resolve(train.path))))
    text = text.replace("LABEL", shlex.quote(train.label or "LABEL"))
    sensitive = config.threat_model.inversion.sensitive
    if sensitive:
        text = text.replace("COLUMN", shlex.quote(sensitive))
    return dataclasses.replace(
        finding, remediation=f"{text} Within the audit: `bastion audit --only inversion`.")


def _reconstruct(config: AuditConfig, ctx: CheckContext, target, x, y, classes, result):
    from bastion.assess.inversion import assess_inversion, plot_reconstructions
    from bastion.models.classifier import as_classifier

    declared = config.threat_model.inversion
    options = {}
    if is_torch(target):
        options = {"input_shape": tuple(config.model.input_shape or x.shape[1:]),
                   "clip_values": config.model.clip_values}
    assessment = assess_inversion(
        as_classifier(target, **options), x, y, steps=declared.steps, seed=ctx.seed,
        policy=policy(declared), location=str(model_file(config)),
    )
    result.findings.extend(assessment.findings)
    result.metrics.update(assessment.metrics())
    path = ctx.out / "miface-reconstructions.png"
    plot_reconstructions(assessment.reconstructions, path, [str(c) for c in classes] or None)
    identified = result.metrics["reconstruction"].get("identified_fraction")
    caption = "MIFace: one input per class, found by gradient descent on the model's loss"
    if identified is not None:
        caption += f"; {identified:.0%} resemble their class's training data more than any other"
    result.plots.append(Plot("Model inversion: class reconstructions", "image/png",
                             path.read_bytes(), caption + "."))
    result.artifacts.append({"path": str(path), "kind": "plot"})


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.assess.inversion import assess_inversion

    declared = config.threat_model.inversion
    target = load_target(config)
    data, x, y = labelled(config, "train", target)
    ctx.out.mkdir(parents=True, exist_ok=True)
    result = CheckResult()
    if declared.sensitive is not None:
        assessment = assess_inversion(
            target, x, y, sensitive=declared.sensitive, feature_names=data.feature_names,
            seed=ctx.seed, policy=policy(declared), location=str(model_file(config)),
        )
        result.findings.extend(assessment.findings)
        result.metrics.update(assessment.metrics())
    if declared.reconstruct:
        _reconstruct(config, ctx, target, x, y, data.classes, result)
    result.findings = [_recheck(f, config) for f in result.findings]
    result.metrics |= {"max_advantage": declared.max_advantage,
                       "max_identified": declared.max_identified}
    return result


CHECK = Check(
    name="inversion",
    title="Model inversion and attribute inference",
    threats=(Threat.MODEL_INVERSION,),
    applies=_applies,
    run=_run,
)
