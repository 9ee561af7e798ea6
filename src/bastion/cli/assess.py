"""`bastion assess ...`: red-team assessments of a model. Each assessment registers its
sub-command on `assess_app` through a small function."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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
)
from bastion.errors import InputError, UsageError
from bastion.report import Report

assess_app = typer.Typer(
    name="assess",
    help="Red-team assessments: measure how a model holds up against an attack.",
    no_args_is_help=True,
)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{what} must be numbers separated by commas, got {text!r}") from None


def _clip(text: str | None, x: np.ndarray) -> tuple[float, float]:
    """--clip lo,hi, or the range the data spans."""
    if text is None:
        low, high = float(x.min()), float(x.max())
        if low >= high:
            raise UsageError("the data holds a single value; give the valid range with --clip")
        return low, high
    values = _floats(text, "--clip")
    if len(values) != 2 or values[0] >= values[1]:
        raise UsageError(f"--clip must be LOW,HIGH with LOW < HIGH, got {text!r}")
    return values[0], values[1]


def _feature_index(name: str, names: tuple[str, ...], size: int) -> int:
    if name in names:
        return names.index(name)
    if name.strip().isdigit() and int(name) < size:
        return int(name)
    known = f" (columns: {', '.join(names)})" if names else ""
    raise UsageError(f"unknown feature {name!r}; give a column name or an index{known}")


def _ranges(path: str | None, names: tuple[str, ...], size: int) -> dict[int, tuple[float, float]]:
    """--ranges FILE.json: {"feature": [low, high], ...} by column name or flat index."""
    if path is None:
        return {}
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such ranges file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(document, dict):
        raise InputError(f'{path}: expected an object {{"feature": [low, high]}}')
    ranges = {}
    for name, bounds in document.items():
        if (not isinstance(bounds, list) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) for b in bounds)):
            raise InputError(f"{path}: range of {name!r} must be [low, high]")
        ranges[_feature_index(str(name), names, size)] = (float(bounds[0]), float(bounds[1]))
    return ranges


def _curve_table(result: Any) -> Table:
    table = Table(title=f"robust accuracy (L{result.norm}, {result.n_points} points, clean "
                  f"{result.clean_accuracy:.1%})", title_justify="left")
    table.add_column("eps", justify="right")
    for attack in result.attacks:
        table.add_column(f"after {attack}", justify="right")
    table.add_column("robust accuracy", justify="right", style="bold")
    for point in result.curve:
        table.add_row(
            f"{point.eps:g}",
            *[f"{s.robust_accuracy:.1%}" for s in point.stages],
            f"{point.robust_accuracy:.1%}",
        )
    return table


@friendly_errors
def evasion_command(
    data: Annotated[str, typer.Option("--data", help="Labelled data: .npz (x, y), .npy, CSV, "
                                      "Parquet, JSONL (with --label) or an image folder.")],
    model: Annotated[Optional[str], typer.Option(  # noqa: UP045 - typer reads it at run time
        "--model", help="TorchScript, state_dict/.safetensors (+ --model-factory), ONNX, "
        "or scikit-learn pickle/joblib (scanned first).")] = None,
    model_url: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--model-url", help="A remote JSON endpoint (black-box).")] = None,
    model_factory: ModelFactoryOption = None,
    eps: Annotated[str, typer.Option("--eps", help="Epsilons, comma-separated.")] = "0.01,0.03,0.1",
    declared_eps: Annotated[Optional[float], typer.Option(  # noqa: UP045
        "--declared-eps", help="The epsilon the model must withstand (default: smallest).")] = None,
    norm: Annotated[str, typer.Option("--norm", help="inf or 2.")] = "inf",
    attacks: Annotated[str, typer.Option(
        "--attacks", help="auto, or names: fgsm, pgd, apgd-ce, apgd-dlr, apgd-t, fab-t, "
        "square, hopskipjump.")] = "auto",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Iterations of the gradient "
                                       "attacks.")] = 50,
    budget: Annotated[int, typer.Option("--budget", min=1, help="Queries per point for the "
                                        "black-box attacks.")] = 1000,
    query_limit: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--query-limit", min=1, help="Total queries allowed to --model-url.")] = None,
    seed: SeedOption = 0,
    points: Annotated[Optional[int], typer.Option(  # noqa: UP045
        "--points", min=1, help="Assess only the first N rows.")] = None,
    label: LabelOption = None,
    x_key: Annotated[str, typer.Option("--x-key", help="Feature array in the .npz.")] = "x",
    y_key: Annotated[str, typer.Option("--y-key", help="Label array in the .npz.")] = "y",
    clip: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--clip", help="Valid input range LOW,HIGH (default: the range of --data).")] = None,
    ranges: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--ranges", help='JSON {"feature": [low, high]} per-feature valid ranges.')] = None,
    immutable: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--immutable", help="Features an attacker cannot change (names or indices).")] = None,
    floor: Annotated[float, typer.Option("--floor", help="Robust accuracy at the declared "
                                         "epsilon below this is high severity.")] = 0.5,
    plot: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--plot", help="Write the robustness curve to this .png or .svg.")] = None,
    fmt: FormatOption = "table",
    fail_on: FailOnOption = "high",
    out: OutOption = None,
    ledger: LedgerOption = None,
) -> None:
    """How far does the model hold against adversarial examples? Robust accuracy per epsilon,
    from attacks run in sequence on the points still standing, with gradient-masking checks."""
    from bastion.assess.evasion import Constraints, EvasionPolicy, evaluate_robustness
    from bastion.assess.evasion.constraints import check_eps
    from bastion.assess.evasion.plot import plot_curve, plot_format
    from bastion.assess.evasion.robustness import resolve_attacks
    from bastion.data import load_dataset
    from bastion.models.resolve import class_indices, resolve_model

    threshold = parse_severity(fail_on)
    epsilons = [check_eps(e) for e in _floats(eps, "--eps")]
    if plot is not None:
        plot_format(plot)
    if not 0 <= floor <= 1:
        raise UsageError(f"--floor must be between 0 and 1, got {floor}")
    check_ledger(ledger)  # a missing ledger fails now, not after the attacks
    dataset = load_dataset(data, label=label, x_key=x_key, y_key=y_key)
    x = dataset.x[:points] if points else dataset.x
    if np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{data}: features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    clip_values = _clip(clip, x)
    classifier = resolve_model(
        model, model_factory, tuple(x.shape[1:]), clip_values=clip_values, url=model_url,
        budget=query_limit,
    )
    y = class_indices(dataset, classifier)[: len(x)]
    resolve_attacks(classifier, attacks)
    size = int(np.prod(x.shape[1:]))
    names = dataset.feature_names
    frozen = [_feature_index(n.strip(), names, size) for n in (immutable or "").split(",")
              if n.strip()]
    constraints = Constraints.build(
        x.shape[1:], clip_values, feature_ranges=_ranges(ranges, names, size), immutable=frozen
    )
    policy = EvasionPolicy(declared_eps=declared_eps, high_below=floor,
                           medium_below=max(floor, EvasionPolicy.medium_below))
    stages = len(epsilons) * len(resolve_attacks(classifier, attacks)) + 1
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("evasion", total=stages)
        result = evaluate_robustness(
            classifier, x, y, epsilons, norm, attacks, seed, steps=steps, budget=budget,
            constraints=constraints, policy=policy, location=str(model or model_url),
            progress=lambda label_: bar.update(task, advance=1, description=label_),
        )
    metrics = result.metrics()
    if plot is not None:
        plot_curve(result, plot)
        metrics["plot"] = plot
    if ledger is not None:
        _record(ledger, model, data, metrics, result.findings)
    if fmt == "table" and out is None:
        Console().print(_curve_table(result))
    command = f"assess evasion --model {model or model_url} --data {data}"
    artifacts = [{"path": str(model or model_url), "kind": "model"},
                 {"path": str(data), "kind": "data", "rows": len(x)}]
    emit(Report(command, result.findings, artifacts, metrics), fmt, out, threshold)


def _record(ledger: str, model: str | None, data: str, metrics: dict, findings: list) -> None:
    from bastion.findings import Severity
    from bastion.govern.events import Event, Subject, default_actor, file_digest
    from bastion.govern.ledger import record

    subjects = tuple(Subject(p, file_digest(p)) for p in (model,) if p)
    counts = {str(s): sum(f.severity == s for f in findings) for s in Severity}
    details = {
        "assessment": "evasion", "norm": metrics["norm"], "points": metrics["points"],
        "robust_accuracy": metrics["robust_accuracy"], "findings": counts,
    }
    record(ledger, [Event(kind="assess", actor=default_actor(), subjects=subjects,
                          parents=(file_digest(data),) if Path(data).is_file() else (),
                          details=details)])


def register_evasion(app: typer.Typer) -> None:
    app.command("evasion")(evasion_command)


register_evasion(assess_app)
