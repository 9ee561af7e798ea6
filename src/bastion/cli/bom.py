"""`bastion bom`: a CycloneDX 1.6 ML-BOM of a model, its data and its Python packages."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bastion.cli.common import LedgerOption, err_console, friendly_errors
from bastion.cli.documents import record_documents, write_documents
from bastion.errors import UsageError
from bastion.govern.results import load_results
from bastion.govern.userdocs import CardInput, load_user_yaml
from bastion.supplychain.bom import build_bom, inspect_data, inspect_model
from bastion.supplychain.pydeps import (
    PackageSet,
    from_environment,
    from_lock,
    from_requirements,
)


def package_source(requirements: str | None, lock: str | None) -> PackageSet:
    """--requirements, --lock, or (neither) the environment Bastion runs in."""
    if requirements and lock:
        raise UsageError("give either --requirements or --lock, not both")
    if requirements:
        return from_requirements(requirements)
    if lock:
        return from_lock(lock)
    return from_environment()


@friendly_errors
def bom_command(
    model: Annotated[
        list[str], typer.Option("--model", "-m", help="Model file (repeatable).")
    ],
    data: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--data", "-d", help="Dataset file or image folder (repeatable)."),
    ] = None,
    label: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--label", help="Class column of tabular data (for class counts)."),
    ] = None,
    requirements: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--requirements", "-r", help="pip requirements file to list."),
    ] = None,
    lock: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--lock", help="uv.lock, poetry.lock or pylock.toml to list."),
    ] = None,
    card_data: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--card-data", help="Bastion JSON report whose metrics go in the card."),
    ] = None,
    user: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--user", help="card.yaml: intended use, limitations, license ..."),
    ] = None,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Where to write the BOM ('-': stdout).")
    ] = "-",
    ledger: LedgerOption = None,
) -> None:
    """Write a CycloneDX 1.6 ML-BOM: model (with model card), datasets, Python packages."""
    card = load_user_yaml(user, CardInput)
    results = load_results(card_data or [])
    models = [inspect_model(path) for path in model]
    datasets = [inspect_data(path, label) for path in data or []]
    packages = package_source(requirements, lock)
    text = build_bom(models, datasets, packages, results, card)
    write_documents({out: text})
    parents = ["sha256:" + m.sha256 for m in models] + [
        "sha256:" + d.sha256 for d in datasets if d.sha256
    ]
    record_documents(
        ledger, "cyclonedx-1.6", {out: text}, parents, {"packages": len(packages.packages)}
    )
    if out != "-":
        err_console.print(
            f"wrote {out}: {len(models)} model(s), {len(datasets)} dataset(s), "
            f"{len(packages.packages)} package(s) from {packages.source}"
        )
