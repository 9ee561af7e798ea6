"""Data poisoning: which training rows look poisoned (`bastion data check` on `[data.train]`).

The detectors of `bastion.data.poison` (label issues by confident learning, backdoor clusters,
duplicates, outliers; Neural Cleanse for a torch image model) run with the project's model
where it helps them: a scikit-learn model is cloned for the out-of-fold probabilities, a
white-box model gives its penultimate features. A model that cannot be used (no factory for
torch weights, a model the scan refuses) leaves the check on Bastion's default model; the
metrics say which model was used and why. The ranked suspicious rows are written as CSV and
the score histogram is embedded in the report.
"""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

import numpy as np

from bastion.audit_checks import Check, CheckContext, CheckResult, Plot
from bastion.audit_checks._model import classifier
from bastion.config import AuditConfig
from bastion.data.rules import (
    BACKDOOR_CLUSTER,
    DUPLICATES,
    LABEL_ISSUES,
    MODEL_BACKDOOR,
    OUTLIERS,
)
from bastion.errors import BastionError, InputError
from bastion.findings import Finding, Threat

# The rules this check reports, imported when the registry loads the check, so that they are
# registered in the process that renders the report too (the check may run elsewhere).
RULES = (BACKDOOR_CLUSTER, LABEL_ISSUES, DUPLICATES, OUTLIERS, MODEL_BACKDOOR)
ROWS_FILE, PLOT_FILE = "poisoning-rows.csv", "poisoning-scores.png"


def _applies(config: AuditConfig) -> bool:
    return config.data.train is not None


def _training_data(config: AuditConfig) -> Any:
    from bastion.data import load_dataset

    declared = config.data.train
    dataset = load_dataset(config.resolve(declared.path), label=declared.label)
    if dataset.y is None:
        raise InputError(f"{dataset.source}: [data.train] needs labels for the poisoning check "
                         "(label = \"COLUMN\" for a table, y in an .npz)")
    return dataset


def _model_inputs(config: AuditConfig, x: np.ndarray) -> np.ndarray:
    """The rows as float32 in `[model] input_shape` (a torch image model needs its shape)."""
    x = np.asarray(x, dtype=np.float32)
    shape = config.model.input_shape
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise InputError(f"{config.resolve(config.data.train.path)}: rows have shape "
                             f"{tuple(x.shape[1:])}, which does not fit [model] input_shape "
                             f"{list(shape)}")
        x = x.reshape(len(x), *shape)
    return x


def _with_model(config: AuditConfig, x: np.ndarray, detectors: tuple[str, ...], seed: int
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """What the project's model contributes to `check_dataset` (an estimator to clone, or
    features and a trigger search), and a note on which model was used."""
    from bastion.data.neural_cleanse import search_triggers
    from bastion.models.classifier import SklearnClassifier, WhiteBoxClassifier

    if config.model is None:
        return {}, {"used": False, "reason": "no [model] declared"}
    inputs = _model_inputs(config, x)
    try:
        target = classifier(config, tuple(inputs.shape[1:]), config.model.clip_values)
    except BastionError as exc:  # reported by the scan/signature checks; data still checkable
        return {}, {"used": False, "reason": str(exc)}
    if isinstance(target, SklearnClassifier):
        return {"estimator": target.estimator}, {"used": True, "as": "estimator"}
    if isinstance(target, WhiteBoxClassifier):
        extra: dict[str, Any] = {"features": target.features(inputs)}
        if "trigger" in detectors and inputs.ndim == 4:  # Neural Cleanse is for image models
            extra["triggers"] = search_triggers(target, inputs, seed=seed)
        return extra, {"used": True, "as": "features"}
    return {}, {"used": False,
                "reason": f"{type(target).__name__} gives neither an estimator nor features"}


def recheck_command(config: AuditConfig, detectors: tuple[str, ...], seed: int) -> str:
    """The `bastion data check` command that repeats this check from the project folder."""
    declared = config.data.train
    parts = ["bastion", "data", "check", "--data", str(config.resolve(declared.path))]
    if declared.label:
        parts += ["--label", declared.label]
    if config.model is not None:
        parts += ["--model", str(config.model_paths()[0])]
        if config.model.factory:
            parts += ["--model-factory", config.model.factory]
    parts += ["--detectors", ",".join(detectors), "--seed", str(seed),
              "--rows-out", "rows.csv"]
    return shlex.join(parts)


def _recheck(finding: Finding, command: str) -> Finding:
    return dataclasses.replace(
        finding, remediation=f"{finding.remediation} For this project: `{command}`; within "
        "the audit: `bastion audit --only poisoning`.")


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.data.poison import check_dataset, check_findings
    from bastion.data.poison_output import score_plot, write_rows

    detectors = tuple(dict.fromkeys(config.threat_model.poisoning.detectors))
    dataset = _training_data(config)
    extra, model_note = _with_model(config, dataset.x, detectors, ctx.seed)
    triggers = extra.pop("triggers", None)
    result = check_dataset(dataset.x, dataset.y, seed=ctx.seed,
                           detectors=tuple(d for d in detectors if d != "trigger"), **extra)
    rows = result.ranked_rows(dataset.y, dataset.classes)
    ctx.out.mkdir(parents=True, exist_ok=True)
    rows_path, plot_path = ctx.out / ROWS_FILE, ctx.out / PLOT_FILE
    write_rows(rows, str(rows_path))
    score_plot(result, str(plot_path))
    command = recheck_command(config, detectors, ctx.seed)
    findings = check_findings(result, str(dataset.source), dataset.classes, triggers=triggers)
    caption = (f"Detector scores of the {result.n_rows} training rows (log scale); red: the "
               f"{len(rows)} rows flagged as suspicious, listed in {ROWS_FILE}.")
    return CheckResult(
        findings=[_recheck(f, command) for f in findings],
        metrics={
            "rows": result.n_rows,
            "suspicious": len(rows),
            **{f"flagged_{name}": int(flags.sum()) for name, flags in result.flags.items()},
            "classes": {str(k): v for k, v in result.classes.items() if k >= 0},
            "detectors": list(detectors),
            "model": model_note,
            "rows_file": str(rows_path),
            "plot": str(plot_path),
            "command": command,
            **({"trigger_search": triggers.to_json()} if triggers is not None else {}),
        },
        plots=[Plot("Poisoning detector scores", "image/png", plot_path.read_bytes(), caption)],
        artifacts=[{"path": str(rows_path), "kind": "suspicious-rows", "rows": len(rows)},
                   {"path": str(plot_path), "kind": "plot"}],
    )


CHECK = Check(
    name="poisoning",
    title="Poisoned rows in the training data",
    threats=(Threat.DATA_POISONING,),
    applies=_applies,
    run=_run,
)
