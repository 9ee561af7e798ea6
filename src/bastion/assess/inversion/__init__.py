"""Model inversion: what the model reveals about its training data beyond membership.

`assess_inversion(target, x, y, ...)` reconstructs class representatives by gradient
descent (MIFace, differentiable models) or, with `sensitive=` a column, infers that column
of the records from the others plus the model's output and compares with an attacker who
never queries the model. Findings: BST-PRIV-003 and BST-PRIV-002 (OWASP ML03, ATLAS
AML.T0024.001).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bastion.assess.inversion.attribute import AttributeInference, infer_attribute
from bastion.assess.inversion.miface import (
    Reconstructions,
    plot_reconstructions,
    reconstruct_classes,
)
from bastion.assess.privacy_rules import ATTRIBUTE_INFERENCE, CLASS_RECONSTRUCTION
from bastion.errors import InputError
from bastion.findings import Finding, Location, Severity
from bastion.models.classifier import Classifier, as_classifier, check_inputs

__all__ = [
    "AttributeInference",
    "InversionAssessment",
    "InversionPolicy",
    "Reconstructions",
    "assess_inversion",
    "infer_attribute",
    "plot_reconstructions",
    "reconstruct_classes",
]


@dataclass(frozen=True)
class InversionPolicy:
    # Attribute inference: accuracy gained over the attacker who does not query the model
    # (reported only when it also exceeds two standard errors of the difference).
    advantage: tuple[tuple[Severity, float], ...] = (
        (Severity.HIGH, 0.15),
        (Severity.MEDIUM, 0.05),
        (Severity.LOW, 0.02),
    )
    # Reconstruction: share of classes whose reconstruction resembles that class's data
    # more than any other class's, among reconstructions the model is confident about.
    identified: tuple[tuple[Severity, float], ...] = (
        (Severity.HIGH, 0.9),
        (Severity.MEDIUM, 0.5),
        (Severity.LOW, 0.2),
    )
    confident: float = 0.9


@dataclass(frozen=True)
class InversionAssessment:
    findings: list[Finding]
    reconstructions: Reconstructions | None = None
    attribute: AttributeInference | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = dict(self.extra)
        if self.attribute is not None:
            metrics["attribute_inference"] = self.attribute.metrics()
        if self.reconstructions is not None:
            recon = self.reconstructions
            metrics["reconstruction"] = {
                "classes": recon.classes.tolist(),
                "confidence": np.round(recon.confidence, 6).tolist(),
            }
            if recon.identified is not None:
                metrics["reconstruction"] |= {
                    "similarity_own_class": np.round(recon.similarity_own, 6).tolist(),
                    "similarity_other_class": np.round(recon.similarity_other, 6).tolist(),
                    "identified_fraction": round(_identified_fraction(recon, 0.0), 6),
                }
        return metrics


def assess_inversion(
    target: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sensitive: int | str | None = None,
    feature_names: Sequence[str] = (),
    x_aux: np.ndarray | None = None,
    y_aux: np.ndarray | None = None,
    classes: np.ndarray | None = None,
    steps: int = 300,
    seed: int = 0,
    policy: InversionPolicy | None = None,
    location: str = "model",
    input_shape: tuple[int, ...] | None = None,
) -> InversionAssessment:
    """Attribute inference when `sensitive` names a column (index or feature name),
    otherwise MIFace reconstruction of each class (needs a differentiable model)."""
    policy = policy or InversionPolicy()
    classifier = _classifier(target, input_shape or tuple(x.shape[1:]))
    check_inputs(classifier, x, y)
    where = Location(location)
    if sensitive is not None:
        index, name = _column(sensitive, feature_names, x.shape[1] if x.ndim == 2 else 0)
        attribute = infer_attribute(
            classifier, x, y, index, column=name, x_aux=x_aux, y_aux=y_aux, seed=seed
        )
        return InversionAssessment(_attribute_findings(attribute, policy, where), None, attribute)
    recon = reconstruct_classes(classifier, classes=classes, x=x, y=y, steps=steps)
    return InversionAssessment(_reconstruction_findings(recon, policy, where), recon)


def _classifier(target: Any, input_shape: tuple[int, ...]) -> Classifier:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and isinstance(target, torch.nn.Module):
        return as_classifier(target, input_shape=input_shape)
    return as_classifier(target)


def _column(sensitive: int | str, names: Sequence[str], width: int) -> tuple[int, str]:
    if isinstance(sensitive, str):
        if sensitive not in names:
            listed = ", ".join(names) or "none: the data has no column names"
            raise InputError(f"no sensitive column {sensitive!r} (columns: {listed})")
        return list(names).index(sensitive), sensitive
    if not 0 <= sensitive < width:
        raise InputError(f"sensitive column index {sensitive} is outside 0..{width - 1}")
    return sensitive, names[sensitive] if names else f"column {sensitive}"


def _grade(value: float, levels: tuple[tuple[Severity, float], ...]) -> Severity | None:
    return max((s for s, bound in levels if value >= bound), default=None)


def _attribute_findings(result: AttributeInference, policy: InversionPolicy, where: Location):
    severity = _grade(result.advantage, policy.advantage)
    if severity is None or result.advantage <= result.noise_margin:
        return []
    title = (
        f"the model's output reveals {result.column!r}: {result.best_attack} attack "
        f"{result.attack_accuracy[result.best_attack]:.1%} accurate vs "
        f"{result.baseline_accuracy:.1%} without querying the model "
        f"(advantage {result.advantage:+.1%})"
    )
    return [ATTRIBUTE_INFERENCE.finding(title, where, severity=severity,
                                        evidence=result.metrics())]


def _identified_fraction(recon: Reconstructions, confident: float) -> float:
    if recon.identified is None:
        return 0.0
    return float((recon.identified & (recon.confidence >= confident)).mean())


def _reconstruction_findings(recon: Reconstructions, policy: InversionPolicy, where: Location):
    if recon.identified is None:
        return []
    fraction = _identified_fraction(recon, policy.confident)
    severity = _grade(fraction, policy.identified)
    if severity is None:
        return []
    title = (
        f"MIFace reconstructions resemble their class's training data for {fraction:.0%} of "
        f"{len(recon.classes)} classes (model confidence >= {policy.confident:.0%})"
    )
    evidence = {
        "identified_fraction": round(fraction, 6),
        "classes": recon.classes.tolist(),
        "identified": recon.identified.tolist(),
        "mean_confidence": round(float(recon.confidence.mean()), 6),
    }
    return [CLASS_RECONSTRUCTION.finding(title, where, severity=severity, evidence=evidence)]
