"""`bastion assess poisoning`: how much would label flips or a backdoor at a given poison rate
hurt this model? Retrains on poisoned copies and reports accuracy drop and attack success."""

from __future__ import annotations

import importlib
import io
from typing import Annotated, Any, Optional

import typer

from bastion.assess.poisoning import ATTACKS, PoisoningAssessment, assess_poisoning, sklearn_trainer
from bastion.cli.common import (
    FormatOption,
    LabelOption,
    LedgerOption,
    OutOption,
    SeedOption,
    check_ledger,
    emit,
    friendly_errors,
    record_files,
)
from bastion.data.dataset import load_dataset
from bastion.errors import InputError, UsageError
from bastion.findings import Severity
from bastion.fsutil import atomic_write
from bastion.report import Report


def _parse_rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"--rates {text!r}: give comma-separated fractions, e.g. 0.01,0.05"
        ) from None
    if not rates or any(not 0.0 <= r < 1.0 for r in rates):
        raise UsageError(f"--rates {text!r}: each rate must be in [0, 1)")
    return sorted(rates)


def _trainer(model: str | None, train_fn: str | None) -> Any:
    if model and train_fn:
        raise UsageError("give --model or --train-fn, not both")
    if train_fn:
        module_name, _, function = train_fn.partition(":")
        try:
            return getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError, ValueError):
            raise UsageError(f"--train-fn {train_fn}: no such importable function") from None
    if model:
        from bastion.models import load

        estimator = load(model)
        if not hasattr(estimator, "fit"):
            raise UsageError(f"{model} is not a scikit-learn estimator; retrain with --train-fn")
        return sklearn_trainer(estimator)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return sklearn_trainer(make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)))


def _plot(result: PoisoningAssessment, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (accuracy, success) = plt.subplots(1, 2, figsize=(8, 3))
    for attack in dict.fromkeys(p.attack for p in result.points):
        points = [p for p in result.points if p.attack == attack]
        rates = [p.rate for p in points]
        accuracy.plot(rates, [p.clean_accuracy for p in points], marker="o", label=attack)
        success.plot(rates, [p.attack_success for p in points], marker="o", label=attack)
    accuracy.axhline(result.baseline_accuracy, color="grey", linestyle="--", label="no poison")
    accuracy.set(xlabel="poison rate", ylabel="clean accuracy")
    success.set(xlabel="poison rate", ylabel="attack success rate", ylim=(0, 1.05))
    accuracy.legend(fontsize=7)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic_write(path, buffer.getvalue())


@friendly_errors
def poisoning_command(
    data: Annotated[str, typer.Option("--data", help="Labelled training data.")],
    label: LabelOption = None,
    model: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--model", help="A scikit-learn estimator to clone and refit."),
    ] = None,
    train_fn: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--train-fn", help="package.module:function(x, y, seed) -> model."),
    ] = None,
    attacks: Annotated[
        str, typer.Option("--attacks", help="Comma list of: " + ", ".join(ATTACKS))
    ] = ",".join(ATTACKS),
    rates: Annotated[str, typer.Option("--rates", help="Poison rates.")] = "0.01,0.05,0.1,0.2",
    target: Annotated[int, typer.Option("--target", help="Class index the attacker wants.")] = 0,
    source: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--source", help="Class relabelled by the targeted flip."),
    ] = None,
    patch: Annotated[int, typer.Option("--patch", help="Trigger size (pixels/features).")] = 2,
    test_size: Annotated[float, typer.Option("--test-size", help="Held-out share.")] = 0.25,
    seed: SeedOption = 0,
    plot: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--plot", help="Write accuracy and attack success vs rate (.png)."),
    ] = None,
    fmt: FormatOption = "table",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Simulate label flipping and BadNets backdoors at each rate; retrain; measure."""
    from sklearn.model_selection import train_test_split

    check_ledger(ledger)
    chosen = [a.strip() for a in attacks.split(",") if a.strip()]
    dataset = load_dataset(data, label=label)
    if dataset.y is None:
        raise UsageError(f"{data} has no labels; name the label column with --label")
    if len(dataset) < 20:
        raise InputError(f"{data}: need at least 20 rows to assess, got {len(dataset)}")
    x_train, x_test, y_train, y_test = train_test_split(
        dataset.x, dataset.y, test_size=test_size, random_state=seed, stratify=dataset.y
    )
    result = assess_poisoning(
        _trainer(model, train_fn),
        x_train,
        y_train,
        x_test,
        y_test,
        attacks=chosen,
        rates=_parse_rates(rates),
        target=target,
        source=source,
        seed=seed,
        patch=patch,
        flat=train_fn is None,
    )
    if plot:
        _plot(result, plot)
    metrics = {
        "baseline_accuracy": round(result.baseline_accuracy, 4),
        **{f"baseline_success_{k}": round(v, 4) for k, v in result.baseline_attack_success.items()},
    }
    report = Report(f"assess poisoning --data {data}", [], result.table(), metrics)
    record_files(ledger, "assess", [data, *([model] if model else [])],
                 {"assessment": "poisoning", **metrics})
    emit(report, fmt, out, Severity.CRITICAL)
