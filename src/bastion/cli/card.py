"""`bastion card` and `bastion datasheet`: documents for a model and for a dataset, from the
ledger, Bastion's JSON reports and a short YAML of what only people can answer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bastion.cli.common import LedgerOption, err_console, friendly_errors
from bastion.cli.documents import record_documents, write_documents
from bastion.errors import UsageError
from bastion.govern.card import CardInputs, build_card
from bastion.govern.datasheet import DatasheetInputs, build_datasheet
from bastion.govern.document import RENDERERS, Document
from bastion.govern.lineage import History, read_history
from bastion.govern.results import load_results
from bastion.govern.userdocs import CardInput, DatasheetInput, load_user_yaml
from bastion.supplychain.bom import inspect_data, inspect_model

OutOption = Annotated[
    str,
    typer.Option("--out", "-o", help="A folder (one file per format) or a .md/.html file."),
]
DocFormatOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--format", "-f", help="md, html or md,html (default: from --out, else both)."),
]
NoRecordOption = Annotated[
    bool, typer.Option("--no-record", help="Read the ledger but do not record the document.")
]


def output_paths(out: str, formats: str | None, stem: str) -> dict[str, str]:
    """format -> path. A path ending in .md or .html is one file of that format; anything
    else is a folder that gets STEM.md and/or STEM.html."""
    wanted = [f.strip() for f in formats.split(",")] if formats else []
    unknown = [f for f in wanted if f not in RENDERERS]
    if unknown or (formats is not None and not wanted):
        raise UsageError(f"unknown --format {formats!r} (expected md, html or md,html)")
    target = Path(out)
    suffix = target.suffix.lower().lstrip(".")
    if suffix in RENDERERS:
        if wanted and wanted != [suffix]:
            raise UsageError(f"--out {out} is a .{suffix} file but --format asks for {formats}")
        return {suffix: out}
    if (target.exists() and not target.is_dir()) or (suffix and not target.is_dir()):
        raise UsageError(f"--out {out}: give a folder or a file ending in .md or .html")
    return {fmt: str(target / f"{stem}.{fmt}") for fmt in (wanted or list(RENDERERS))}


def write_rendered(
    doc: Document, paths: dict[str, str], ledger: str | None, record: bool, kind: str,
    parents: list[str],
) -> None:
    outputs = {path: RENDERERS[fmt](doc) for fmt, path in paths.items()}
    write_documents(outputs)
    if record:
        record_documents(ledger, kind, outputs, parents)
    err_console.print("wrote " + ", ".join(outputs))


def history_for(ledger: str | None, digest: str) -> History | None:
    return read_history(ledger, digest) if ledger and digest else None


@friendly_errors
def card_command(
    model: Annotated[str, typer.Option("--model", "-m", help="The model file.")],
    out: OutOption,
    ledger: LedgerOption = None,
    results: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--results", help="Bastion JSON report (repeatable)."),
    ] = None,
    user: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--user", help="card.yaml: intended use, limitations, owners, license."),
    ] = None,
    fmt: DocFormatOption = None,
    no_record: NoRecordOption = False,
) -> None:
    """Write a model card (Markdown with Hugging Face metadata, and HTML)."""
    card_input = load_user_yaml(user, CardInput)
    reports = load_results(results or [])
    model_file = inspect_model(model)
    paths = output_paths(out, fmt, f"{model_file.path.stem}.card")
    history = history_for(ledger, "sha256:" + model_file.sha256)
    doc = build_card(CardInputs(model_file, card_input, reports, history))
    write_rendered(doc, paths, ledger, not no_record, "model-card",
                   ["sha256:" + model_file.sha256])


@friendly_errors
def datasheet_command(
    data: Annotated[str, typer.Option("--data", "-d", help="Dataset file or image folder.")],
    out: OutOption,
    label: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--label", help="Class column of tabular data."),
    ] = None,
    ledger: LedgerOption = None,
    findings: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--findings", help="Bastion JSON report with PII/poisoning findings."),
    ] = None,
    user: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--user", help="datasheet.yaml: answers to the Gebru et al. questions."),
    ] = None,
    fmt: DocFormatOption = None,
    no_record: NoRecordOption = False,
) -> None:
    """Write a datasheet for a dataset (Markdown and HTML)."""
    sheet_input = load_user_yaml(user, DatasheetInput)
    reports = load_results(findings or [])
    dataset = inspect_data(data, label)
    paths = output_paths(out, fmt, f"{dataset.path.stem}.datasheet")
    digest = "sha256:" + dataset.sha256 if dataset.sha256 else ""
    history = history_for(ledger, digest)
    doc = build_datasheet(
        DatasheetInputs(dataset.composition, dataset.sha256, sheet_input, reports, history)
    )
    write_rendered(doc, paths, ledger, not no_record, "datasheet", [digest] if digest else [])
