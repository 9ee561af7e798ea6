"""`bastion assess extraction --target URL|MODEL --data HELD_OUT`: how cheaply can the model
be copied through its answers, and what does each output defence change?"""

from __future__ import annotations

import os
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

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
from bastion.errors import UsageError
from bastion.report import Report


def _budgets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 10:
        raise UsageError(f"--budget {text!r}: expected query counts of at least 10, e.g. 100,500")
    return values


def _target(target: str, factory: str | None, api_key_env: str,
            input_shape: tuple[int, ...], input_range: tuple[float, float] | None):
    """(classifier, through_gateway, ledger subjects) for a URL or a model file (resolved as
    every command resolves --model: TorchScript, torch weights with --model-factory, ONNX,
    scikit-learn; scanned first)."""
    if target.startswith(("http://", "https://")):
        from bastion.serve.client import RemoteClassifier

        key = os.environ.get(api_key_env)
        if not key:
            raise UsageError(f"set {api_key_env} to the API key for {target}")
        return RemoteClassifier(target, key), True, ()
    from bastion.govern.events import subject_for_file
    from bastion.models.resolve import resolve_model

    classifier = resolve_model(target, factory, input_shape, clip_values=input_range)
    return classifier, False, (subject_for_file(target),)


def _print_runs(runs, console: Console) -> None:
    table = Table(title="Extraction: surrogate fidelity (agreement) by query budget")
    for column in ("defence", "queries", "fidelity", "accuracy", "stopped"):
        table.add_column(column)
    for run in runs:
        for point in run.checkpoints:
            table.add_row(
                run.defence, str(point.queries), f"{point.fidelity:.3f}",
                "-" if point.accuracy is None else f"{point.accuracy:.3f}",
                "" if run.stopped_at is None else f"refused after {run.stopped_at}",
            )
    console.print(table)


@friendly_errors
def extraction_command(
    target: Annotated[str, typer.Option(
        "--target", help="Model file, or http(s)://HOST/v2/models/NAME (key in BASTION_API_KEY).")],
    data: Annotated[str, typer.Option(
        "--data", help="Held-out data to measure fidelity (and accuracy, when labelled).")],
    pool: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer reads annotations
        "--pool", help="Public pool the attacker draws queries from (default: uniform noise "
        "in the input range).")] = None,
    label: LabelOption = None,
    model_factory: ModelFactoryOption = None,
    pool_label: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--pool-label", help="Label column of a --pool table, left out of the queries (the "
        "copier learns only from the model's answers).")] = None,
    budget: Annotated[str, typer.Option("--budget", help="Query budgets, comma-separated.")
                      ] = "100,250,500,1000",
    strategy: Annotated[str, typer.Option(
        "--strategy", help="random, adaptive (uncertainty sampling) or jacobian.")] = "random",
    defence: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--defence", help="Also attack through this output policy (round:2, label, top-k:1, "
        "reverse-sigmoid); repeatable.")] = None,
    input_range: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--input-range", help="Input values LOW:HIGH of a local model.")] = None,
    api_key_env: Annotated[str, typer.Option(
        "--api-key-env", help="Environment variable holding the API key.")] = "BASTION_API_KEY",
    seed: SeedOption = 0,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """Copy the model through its answers (Knockoff-style) and report fidelity vs budget."""
    from bastion.assess.extraction import assess
    from bastion.cli.serve import _parse_pair
    from bastion.data import load_dataset
    from bastion.serve.harden import parse_policy

    threshold = parse_severity(fail_on)
    budgets = _budgets(budget)
    defences = [parse_policy(d) for d in defence or []]
    held_out = load_dataset(data, label=label)
    classifier, through_gateway, subjects = _target(
        target, model_factory, api_key_env, tuple(held_out.x.shape[1:]),
        _parse_pair(input_range, "--input-range"))
    public = load_dataset(pool, label=pool_label).x.astype(np.float64) if pool else None
    result = assess(
        classifier, target, held_out.x.astype(np.float64), held_out.y, pool=public,
        budgets=budgets, strategy=strategy, defences=defences,
        through_gateway=through_gateway, seed=seed,
    )
    metrics = {"strategy": strategy, "seed": seed, "eval_queries": result.eval_queries,
               "runs": [run.to_json() for run in result.runs]}
    report = Report(f"assess extraction --target {target}", result.findings,
                    [{"path": target}], metrics)
    if ledger is not None:
        from bastion.govern.events import Event, default_actor
        from bastion.govern.ledger import record

        record(ledger, [Event(kind="assess", actor=default_actor(), subjects=subjects,
                              details={"assessment": "extraction", **metrics})])
    if fmt == "table":
        _print_runs(result.runs, Console())
    emit(report, fmt, out, threshold)
