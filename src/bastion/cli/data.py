"""`bastion data diff|check`: what changed between two dataset versions, and which rows of a
training set look poisoned."""

from __future__ import annotations

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
    check_ledger,
    emit,
    friendly_errors,
    parse_severity,
    record_files,
)
from bastion.data.dataset import load_dataset
from bastion.data.diff import DiffPolicy, DiffResult, diff_datasets, diff_findings
from bastion.data.neural_cleanse import search_triggers
from bastion.data.poison import DETECTORS, check_dataset, check_findings
from bastion.data.poison_output import score_plot, write_rows
from bastion.errors import UsageError
from bastion.findings import Severity
from bastion.govern.events import Event, Subject, default_actor
from bastion.govern.ledger import record
from bastion.models.classifier import SklearnClassifier, WhiteBoxClassifier
from bastion.models.resolve import resolve_model
from bastion.report import Report

data_app = typer.Typer(
    help="Training data: diff two versions, find poisoned rows, find personal data.",
    no_args_is_help=True,
)

KeyOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--key", help="A column that identifies a row across versions."),
]
CLI_DETECTORS = (*DETECTORS, "trigger")  # trigger: Neural Cleanse, torch image models only


def _fraction(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{name} must be a fraction between 0 and 1, got {value}")
    return value


def diff_event(result: DiffResult) -> Event:
    """The ledger's record of a diff: both dataset digests (order-independent row roots)."""
    return Event(
        kind="data-diff",
        actor=default_actor(),
        subjects=(Subject(result.new.path, result.new.root),),
        parents=(result.old.root,),
        details={
            "old": result.old.to_json(),
            "new": result.new.to_json(),
            **{k: v for k, v in result.metrics().items() if k != "identical"},
        },
    )


@data_app.command("diff")
@friendly_errors
def diff_command(
    old: Annotated[str, typer.Argument(help="The earlier version (file or image folder).")],
    new: Annotated[str, typer.Argument(help="The later version.")],
    label: LabelOption = None,
    key: KeyOption = None,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
    max_changed: Annotated[
        float, typer.Option("--max-changed", help="Changed rows allowed (fraction of OLD).")
    ] = DiffPolicy.max_changed,
    max_label_changes: Annotated[
        float,
        typer.Option("--max-label-changes", help="Relabelled rows allowed (fraction of OLD)."),
    ] = DiffPolicy.max_label_changes,
    max_class_shift: Annotated[
        float, typer.Option("--max-class-shift", help="Change of a class's share allowed.")
    ] = DiffPolicy.max_class_shift,
) -> None:
    """Rows added, removed and modified between OLD and NEW, order-independent, streamed."""
    threshold = parse_severity(fail_on)
    policy = DiffPolicy(
        _fraction(max_changed, "--max-changed"),
        _fraction(max_label_changes, "--max-label-changes"),
        _fraction(max_class_shift, "--max-class-shift"),
    )
    result = diff_datasets(old, new, label=label, key=key)
    findings = diff_findings(result, policy)
    if ledger is not None:
        record(ledger, [diff_event(result)])
    report = Report(
        f"data diff {old} {new}",
        findings,
        artifacts=[result.details()],
        metrics=result.metrics(),
    )
    emit(report, fmt, out, threshold)


@data_app.command("check")
@friendly_errors
def check_command(
    data: Annotated[str, typer.Option("--data", help="Training data (see docs/data.md).")],
    label: LabelOption = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--model",
            help="The model trained on it: TorchScript, torch weights with --model-factory, "
            "ONNX or scikit-learn (scanned before loading).",
        ),
    ] = None,
    model_factory: ModelFactoryOption = None,
    detectors: Annotated[
        str, typer.Option("--detectors", help="Comma list of: " + ", ".join(CLI_DETECTORS))
    ] = ",".join(CLI_DETECTORS),
    rows_out: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--rows-out", help="Write suspicious rows, ranked (.csv or .json)."),
    ] = None,
    plot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--plot", help="Write a histogram of the detectors' scores (.png)."),
    ] = None,
    seed: SeedOption = 0,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Rank the training rows that look poisoned: label issues, backdoors, duplicates, outliers."""
    threshold = parse_severity(fail_on)
    check_ledger(ledger)
    dataset = load_dataset(data, label=label)
    if dataset.y is None:
        raise UsageError(f"{data} has no labels; name the label column with --label")
    chosen = tuple(d.strip() for d in detectors.split(",") if d.strip())
    estimator, features, triggers = None, None, None
    if model is not None:
        x = dataset.x.astype(np.float32)
        classifier = resolve_model(model, model_factory, input_shape=tuple(x.shape[1:]))
        if isinstance(classifier, SklearnClassifier):
            estimator = classifier.estimator  # cloned and refitted for out-of-fold scores
        elif isinstance(classifier, WhiteBoxClassifier):
            features = classifier.features(x)
            if "trigger" in chosen and x.ndim == 4:  # Neural Cleanse is for image models
                triggers = search_triggers(classifier, x, seed=seed)
    result = check_dataset(
        dataset.x,
        dataset.y,
        features=features,
        estimator=estimator,
        seed=seed,
        detectors=tuple(d for d in chosen if d != "trigger"),
    )
    rows = result.ranked_rows(dataset.y, dataset.classes)
    if rows_out:
        write_rows(rows, rows_out)
    if plot:
        score_plot(result, plot)
    findings = check_findings(result, data, dataset.classes, triggers=triggers)
    metrics = {
        "rows": result.n_rows,
        "suspicious": len(rows),
        **{f"flagged_{name}": int(flags.sum()) for name, flags in result.flags.items()},
    }
    classes = {str(k): v for k, v in result.classes.items() if k >= 0}
    artifacts: list[dict[str, Any]] = [{"classes": classes}]
    if triggers is not None:
        artifacts.append({"trigger_search": triggers.to_json()})
    report = Report(f"data check --data {data}", findings, artifacts, metrics)
    counts = {str(s): sum(f.severity == s for f in findings) for s in Severity}
    record_files(ledger, "scan", [data, *([model] if model else [])],
                 {"check": "data-poisoning", **metrics, "findings": counts})
    emit(report, fmt, out, threshold)
