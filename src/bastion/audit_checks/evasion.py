"""Adversarial examples: robust accuracy under the declared evasion threat model
(`bastion assess evasion` on a bounded sample of the test data).

The model is resolved as every command resolves `--model` (scanned first, refused at high);
the attacks run in sequence on the points still standing, as AutoAttack does, at each declared
epsilon, and the result is checked for gradient masking. The sample is the first `points`
rows of `[data.test]`, exactly what `bastion assess evasion --points N` attacks, so the
command every finding names reproduces the audit's numbers from the same seed.
"""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Any

import numpy as np

import bastion.assess.evasion.rules  # noqa: F401 - registers the BST-EVA rules where reports render
from bastion.audit_checks import Check, CheckContext, CheckResult, Plot
from bastion.audit_checks._model import classifier, input_range, model_inputs
from bastion.audit_checks._packages import shown
from bastion.config import DEFAULT_CONFIG, AuditConfig, Evasion
from bastion.errors import InputError
from bastion.findings import Finding, Threat

# The placeholders in the BST-EVA rules' remediation, filled with this audit's values.
_GENERIC_COMMAND = "--model MODEL --data DATA --eps EPS --norm NORM"
_NORMS = {"linf": "inf", "l2": "2"}


def _applies(config: AuditConfig) -> bool:
    return (config.model is not None and config.data.test is not None
            and config.threat_model.evasion is not None)


def _where(config: AuditConfig) -> str:
    return str(config.source or config.root / DEFAULT_CONFIG)


def _sample(config: AuditConfig, evasion: Evasion) -> tuple[Any, np.ndarray]:
    """The test data and its first `points` rows as the model's inputs."""
    from bastion.data import load_dataset

    declared = config.data.test
    dataset = load_dataset(config.resolve(declared.path), label=declared.label)
    if dataset.y is None:
        raise InputError(f"{dataset.source}: [data.test] needs labels for the evasion check "
                         "(label = \"COLUMN\" for a table, y in an .npz)")
    return dataset, model_inputs(config, dataset, evasion.points)


def _classifier(config: AuditConfig, x: np.ndarray, clip: tuple[float, float]) -> Any:
    return classifier(config, tuple(x.shape[1:]), clip)


def _attacks(config: AuditConfig, evasion: Evasion, classifier: Any) -> str | list[str]:
    """The declared attacks; a gradient attack on a model without gradients is a
    configuration error that names the attacks the model does allow."""
    from bastion.assess.evasion.attacks import ATTACKS, torch_backed

    if evasion.attacks == ["auto"]:
        return "auto"
    if not torch_backed(classifier):
        needy = [a for a in evasion.attacks if ATTACKS[a][1]]
        if needy:
            raise InputError(
                f"{_where(config)}: threat_model.evasion.attacks: {', '.join(needy)} need "
                f"gradients, which the model ({type(classifier).__name__}) does not give; use "
                "attacks = [\"square\"] or [\"hopskipjump\"] (black-box), or \"auto\""
            )
    return list(evasion.attacks)


def recheck_command(config: AuditConfig, evasion: Evasion, clip: tuple[float, float],
                    seed: int) -> str:
    """The `bastion assess evasion` command that repeats this check, run in the project
    folder."""
    model, test = config.model, config.data.test
    parts = ["bastion assess evasion", "--model", shown(config, config.model_paths()[0])]
    if model.factory:
        parts += ["--model-factory", model.factory]
    parts += ["--data", shown(config, config.resolve(test.path))]
    if test.label:
        parts += ["--label", shlex.quote(test.label)]
    parts += ["--eps", ",".join(f"{e:g}" for e in evasion.eps)]
    if evasion.declared_eps is not None:
        parts += ["--declared-eps", f"{evasion.declared_eps:g}"]
    parts += ["--norm", _NORMS[evasion.norm], "--attacks", ",".join(evasion.attacks),
              "--points", str(evasion.points), "--steps", str(evasion.steps),
              "--budget", str(evasion.budget), "--clip", f"{clip[0]:g},{clip[1]:g}",
              "--floor", f"{evasion.min_robust_accuracy:g}", "--seed", str(seed)]
    return " ".join(parts)


def _exact(finding: Finding, command: str, declared: float) -> Finding:
    """The rule's generic re-check filled in with this audit's command and epsilon."""
    text = finding.remediation.replace(f"`bastion assess evasion {_GENERIC_COMMAND}`",
                                       f"`{command}`")
    text = text.replace("eps=EPS", f"eps={declared:g}")
    return dataclasses.replace(
        finding, remediation=f"{text} Or re-check with `bastion audit --only evasion`."
    )


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.assess.evasion import Constraints, EvasionPolicy, evaluate_robustness
    from bastion.assess.evasion.plot import curve_image
    from bastion.models.resolve import class_indices

    evasion = config.threat_model.evasion
    dataset, x = _sample(config, evasion)
    clip = input_range(config, x)
    classifier = _classifier(config, x, clip)
    y = class_indices(dataset, classifier)[: len(x)]
    attacks = _attacks(config, evasion, classifier)
    floor = evasion.min_robust_accuracy
    policy = EvasionPolicy(declared_eps=evasion.declared_eps, high_below=floor,
                           medium_below=max(floor, EvasionPolicy.medium_below))
    model_path = config.model_paths()[0]
    result = evaluate_robustness(
        classifier, x, y, evasion.eps, _NORMS[evasion.norm], attacks, ctx.seed,
        steps=evasion.steps, budget=evasion.budget,
        constraints=Constraints.build(x.shape[1:], clip), policy=policy,
        location=str(model_path),
    )
    declared = evasion.declared_eps if evasion.declared_eps is not None else min(evasion.eps)
    command = recheck_command(config, evasion, clip, ctx.seed)
    metrics = {**result.metrics(), "declared_eps": declared, "min_robust_accuracy": floor,
               "clip_values": list(clip), "recheck": command}
    plot = Plot(
        "Robustness curve", "image/png", curve_image(result, "png"),
        caption=f"Robust accuracy against L{result.norm} epsilon on {result.n_points} test "
        f"points (attacks: {', '.join(result.attacks)}); declared epsilon {declared:g}, "
        f"floor {floor:.0%}.",
    )
    data_path = Path(dataset.source)
    return CheckResult(
        findings=[_exact(f, command, declared) for f in result.findings],
        metrics=metrics,
        plots=[plot],
        artifacts=[{"path": str(model_path), "kind": "model"},
                   {"path": str(data_path), "kind": "data", "rows": len(x)}],
    )


CHECK = Check(
    name="evasion",
    title="Adversarial examples (evasion)",
    threats=(Threat.ADVERSARIAL,),
    applies=_applies,
    run=_run,
)
