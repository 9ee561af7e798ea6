"""`bastion assess membership` and `bastion assess inversion`: what a model leaks about the
records it was trained on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer

from bastion.cli.common import (
    FailOnOption,
    FormatOption,
    LabelOption,
    LedgerOption,
    ModelFactoryOption,
    OutOption,
    SeedOption,
    emit,
    friendly_errors,
    parse_severity,
)
from bastion.data import Dataset, load_dataset
from bastion.errors import InputError, UsageError
from bastion.govern.events import Event, Subject, default_actor, file_digest
from bastion.govern.ledger import record
from bastion.models.resolve import fill_module, import_callable, model_labels
from bastion.report import Report

ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="Model file (scikit-learn pickle/joblib, or torch "
                      "state_dict/safetensors with --model-factory).")
]  # fmt: skip
DataOption = Annotated[
    str, typer.Option("--data", "-d", help="Training records (members): .npz, CSV, Parquet, "
                      "JSONL or image folder.")
]  # fmt: skip
PopulationOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--population", help="More records from the same distribution, not used "
                 "to train the model."),
]  # fmt: skip
PlotOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--plot", help="Write a PNG plot to this path."),
]


def load_target(path: str, factory: str | None) -> Any:
    """The model object: a fitted estimator, or a torch module filled from its weights."""
    from bastion.models import load

    loaded = load(path)
    if factory is None:
        if hasattr(loaded, "predict_proba"):
            return loaded
        raise UsageError(
            f"{path} holds {type(loaded).__name__}, not a model with predict_proba; for "
            "torch weights give --model-factory module:function that builds the network"
        )
    return fill_module(import_callable(factory, "--model-factory")(), loaded, path)


def _load(path: str, label: str | None, what: str) -> Dataset:
    data = load_dataset(path, label=label)
    if data.y is None:
        hint = " (name it with --label)" if Path(path).suffix.lower() != ".npz" else ""
        raise InputError(f"{path}: {what} need labels{hint}")
    return data


def _print_attacks(rows: list[dict[str, Any]], title: str) -> None:
    """The numbers behind the findings, for a reader at a terminal (JSON has them too)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "attack" else "right")
    for row in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def _event(model: str, datasets: list[str], check: str, details: dict) -> Event:
    return Event(
        kind="assess",
        actor=default_actor(),
        subjects=(Subject(Path(model).name, file_digest(model)),),
        parents=tuple(file_digest(p) for p in datasets if Path(p).is_file()),
        details={"check": check, **details},
    )


@friendly_errors
def membership_command(
    model: ModelOption,
    data: DataOption,
    nonmembers: Annotated[
        str, typer.Option("--nonmembers", help="Held-out records the model never saw.")
    ],
    label: LabelOption = None,
    population: PopulationOption = None,
    attack: Annotated[
        list[str], typer.Option("--attack", "-a", help="loss, shadow, lira or rmia (repeat).")
    ] = ["rmia"],  # noqa: B006 - typer needs a literal default
    online: Annotated[
        bool, typer.Option("--online/--offline", help="LiRA/RMIA reference models that saw "
                           "the records (online) or not (offline).")
    ] = False,
    references: Annotated[
        int, typer.Option("--references", "-r", min=1, help="Reference models to train.")
    ] = 8,
    train_fn: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--train-fn", help="module:function or file.py:function (x, y, seed) -> "
                     "model; scikit-learn models are cloned and refitted by default."),
    ] = None,
    model_factory: ModelFactoryOption = None,
    ray: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--ray", help="Train reference models on this Ray cluster address."),
    ] = None,
    jobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--jobs", "-j", help="Local processes for reference models."),
    ] = None,
    seed: SeedOption = 0,
    plot: PlotOption = None,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Can an attacker tell which records trained the model? (loss, shadow, LiRA, RMIA)"""
    from bastion.assess.membership import assess_membership, plot_roc

    threshold = parse_severity(fail_on)
    target = load_target(model, model_factory)
    members, held_out = _load(data, label, "members"), _load(nonmembers, label, "non-members")
    extra = _load(population, label, "population records") if population else None
    assessment = assess_membership(
        target,
        members.x, model_labels(target, members),
        held_out.x, model_labels(target, held_out),
        x_population=extra.x if extra else None,
        y_population=model_labels(target, extra) if extra else None,
        attacks=attack, online=online, references=references,
        train_fn=import_callable(train_fn, "--train-fn") if train_fn else None,
        n_jobs=jobs, ray_address=ray, seed=seed, location=model,
    )  # fmt: skip
    metrics = assessment.metrics()
    if plot:
        plot_roc(assessment.results, plot)
        metrics["plot"] = plot
    if ledger is not None:
        datasets = [data, nonmembers, *([population] if population else [])]
        summary = {r.attack: {"auc": round(r.roc.auc, 4),
                              "tpr_at_1%_fpr": round(r.roc.tpr_at_fpr[0.01], 4)}
                   for r in assessment.results}  # fmt: skip
        record(ledger, [_event(model, datasets, "membership", {"attacks": summary})])
    if fmt == "table" and out is None:
        _print_attacks(
            [{"attack": r.attack, "AUC": r.roc.auc, "balanced acc": r.roc.balanced_accuracy,
              "TPR@0.1%FPR": r.roc.tpr_at_fpr[0.001], "TPR@1%FPR": r.roc.tpr_at_fpr[0.01]}
             for r in assessment.results],
            f"{assessment.n_members} members, {assessment.n_nonmembers} non-members, "
            f"{assessment.n_references} reference models",
        )  # fmt: skip
    report = Report(f"assess membership --model {model}", assessment.findings,
                    [{"path": model}, {"path": data}, {"path": nonmembers}], metrics)
    emit(report, fmt, out, threshold)


@friendly_errors
def inversion_command(
    model: ModelOption,
    data: DataOption,
    label: LabelOption = None,
    sensitive: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--sensitive", help="Infer this column (attribute inference); without "
                     "it, reconstruct class representatives (MIFace)."),
    ] = None,
    population: PopulationOption = None,
    model_factory: ModelFactoryOption = None,
    clip: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--clip", help="Input range LOW,HIGH for reconstructions (e.g. 0,1)."),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="MIFace gradient steps.")] = 300,
    seed: SeedOption = 0,
    plot: PlotOption = None,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """What can be reconstructed from the model: class representatives or a sensitive column."""
    from bastion.assess.inversion import assess_inversion, plot_reconstructions
    from bastion.models.classifier import as_classifier

    threshold = parse_severity(fail_on)
    target = load_target(model, model_factory)
    members = _load(data, label, "records")
    y = model_labels(target, members)
    if sensitive is None and _is_torch(target):
        target = as_classifier(target, input_shape=tuple(members.x.shape[1:]),
                               clip_values=_clip(clip))  # fmt: skip
    aux = _load(population, label, "population records") if population else None
    column: int | str | None = sensitive
    if sensitive is not None and sensitive.isdigit() and sensitive not in members.feature_names:
        column = int(sensitive)
    assessment = assess_inversion(
        target, members.x.astype(np.float32) if _is_torch(target) else members.x, y,
        sensitive=column, feature_names=members.feature_names,
        x_aux=aux.x if aux else None, y_aux=model_labels(target, aux) if aux else None,
        steps=steps, seed=seed, location=model,
    )  # fmt: skip
    metrics = assessment.metrics()
    if plot and assessment.reconstructions is not None:
        names = [str(c) for c in members.classes] if members.classes else None
        plot_reconstructions(assessment.reconstructions, plot, names)
        metrics["plot"] = plot
    if ledger is not None:
        details = {k: v for k, v in metrics.items() if k != "plot"}
        record(ledger, [_event(model, [data], "inversion", details)])
    if fmt == "table" and out is None and assessment.attribute is not None:
        result = assessment.attribute
        _print_attacks(
            [{"attack": "baseline (no model queries)", "accuracy": result.baseline_accuracy},
             *({"attack": name, "accuracy": acc} for name, acc in
               result.attack_accuracy.items())],
            f"inferring {result.column!r} for {result.records} records",
        )  # fmt: skip
    report = Report(f"assess inversion --model {model}", assessment.findings,
                    [{"path": model}, {"path": data}], metrics)
    emit(report, fmt, out, threshold)


def _is_torch(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def _clip(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--clip must be LOW,HIGH (e.g. 0,1), got {text!r}") from None
    if not low < high:
        raise UsageError(f"--clip LOW must be below HIGH, got {text!r}")
    return low, high
