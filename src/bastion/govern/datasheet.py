"""Datasheets for datasets (Gebru et al.): the measured composition of the data, its
provenance from the ledger (digests, `data-diff` history, what was trained on it), the PII
and poisoning findings of Bastion's reports, and the question sections only people can
answer (datasheet.yaml), shown as prompts while unanswered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bastion.data.composition import Composition
from bastion.govern.document import Document, Fields, Section, Table, Text
from bastion.govern.lineage import History
from bastion.govern.results import Result
from bastion.govern.userdocs import GEBRU_SECTIONS, DatasheetInput

# Report threats that describe the data itself.
DATA_THREATS = ("privacy", "data-poisoning")
LEDGER_PROMPT = (
    "record changes with `bastion ledger append LEDGER --kind data-diff --file DATA` and "
    "pass `--ledger LEDGER`"
)


def yaml_prompt(key: str) -> str:
    return f"add `{key}` to datasheet.yaml (`bastion datasheet --user datasheet.yaml`)"


@dataclass(frozen=True)
class DatasheetInputs:
    composition: Composition
    sha256: str  # hex; empty for a folder
    user: DatasheetInput  # type: ignore[valid-type]
    results: Sequence[Result]
    history: History | None

    @property
    def name(self) -> str:
        return self.user.name or Path(self.composition.path).name


def build_datasheet(inputs: DatasheetInputs) -> Document:
    sections = [
        _details(inputs), _composition(inputs), _provenance(inputs), _findings(inputs),
        *(_gebru(inputs, key) for key in GEBRU_SECTIONS),
    ]
    digest = f" (sha256 {inputs.sha256})" if inputs.sha256 else ""
    return Document(
        title=f"Datasheet: {inputs.name}",
        summary=(
            f"Dataset `{inputs.composition.path}`{digest}. Written by `bastion datasheet` from "
            "the data itself, the ledger, Bastion's reports and datasheet.yaml; parts marked "
            "'Not provided' need an answer from the dataset's owners (Gebru et al., "
            "Datasheets for Datasets)."
        ),
        sections=sections,
    )


def _details(inputs: DatasheetInputs) -> Section:
    user = inputs.user
    owners = [o.name + (f" <{o.contact}>" if o.contact else "") for o in user.owners]
    return Section("Dataset details", [Fields([
        ("Name", inputs.name, yaml_prompt("name")),
        ("Description", user.description, yaml_prompt("description")),
        ("Owners", "; ".join(owners) or None, yaml_prompt("owners")),
        ("License", user.license, yaml_prompt("license")),
        ("SHA-256", inputs.sha256 or None, "a folder has no single digest; sign it with "
         "`bastion sign` to pin its content"),
        ("Format", inputs.composition.format, ""),
        ("Ledger", inputs.history.status if inputs.history else None, LEDGER_PROMPT),
    ])], sources="datasheet.yaml, the data file, the ledger")


def _composition(inputs: DatasheetInputs) -> Section:
    comp = inputs.composition
    ratio, entropy = comp.imbalance_ratio, comp.balance_entropy
    facts = Fields([
        ("Rows", str(comp.rows), ""),
        ("Features", f"{comp.features} (shape {'x'.join(map(str, comp.feature_shape))})", ""),
        ("Label", comp.label, "name the class column with `--label COLUMN`"),
        ("Classes", str(len(comp.classes)) if comp.label else None,
         "name the class column with `--label COLUMN`"),
        ("Imbalance (largest / smallest class)", f"{ratio:.3g}" if ratio else None,
         "needs a label"),
        ("Balance (normalised class entropy, 1 = balanced)",
         f"{entropy:.3f}" if entropy is not None else None, "needs a label with 2+ classes"),
        ("Missing values", f"{comp.missing_total} cell(s) in {len(comp.missing)} of "
         f"{comp.columns} column(s)", ""),
    ])
    classes = Table(
        ["class", "rows", "share"],
        [[c.label, str(c.count), f"{c.share:.1%}"] for c in comp.classes],
        "No labels: class balance needs `--label COLUMN` (tables) or labels in the data.",
    )
    missing = Table(
        ["column", "missing", "share of rows"],
        [[col, str(n), f"{n / comp.rows:.1%}" if comp.rows else "-"]
         for col, n in comp.missing.items()],
        f"No missing values in any of the {comp.columns} column(s).",
    )
    return Section("Composition (measured)", [facts, classes, missing],
                   sources="measured from the data by `bastion datasheet`")


def _provenance(inputs: DatasheetInputs) -> Section:
    history = inputs.history
    if history is None:
        return Section("Provenance", [Text(None, LEDGER_PROMPT)], sources="the ledger")
    diffs = history.of_kind("data-diff")
    others = [r for r in history.records if r.kind != "data-diff"]
    return Section("Provenance", [
        Text("Changes to the data recorded as `data-diff` events, oldest first:"),
        Table(["entry", "time", "actor", "subjects", "details"],
              [[str(r.index), r.time, r.actor, r.subject_names, r.details_text] for r in diffs],
              "No `data-diff` events for this dataset's digest."),
        Text("Other events in its lineage (scans, models trained on it, documents):"),
        Table(["entry", "time", "kind", "actor", "subjects", "details"],
              [[str(r.index), r.time, r.kind, r.actor, r.subject_names, r.details_text]
               for r in others],
              "No other events for this dataset's digest."),
    ], sources=f"the ledger {history.ledger}")


def _findings(inputs: DatasheetInputs) -> Section:
    found = [f for r in inputs.results for f in r.by_threat(*DATA_THREATS)]
    empty = (
        "No PII or poisoning findings in the reports given."
        if inputs.results else
        "Not provided: run Bastion's PII and poisoning checks with `--format json` and pass "
        "the reports with `--findings`."
    )
    return Section("PII and poisoning findings", [Table(
        ["severity", "rule", "threat", "finding", "location", "remediation"],
        [[f.severity, f.rule_id, f.threat, f.title, f.location, f.remediation] for f in found],
        empty,
    )], sources="Bastion JSON reports (`--findings`)")


def _gebru(inputs: DatasheetInputs, key: str) -> Section:
    title, questions = GEBRU_SECTIONS[key]
    rows = [
        (question, inputs.user.answer(key, qkey), yaml_prompt(f"{key}.{qkey}"))
        for qkey, question in questions.items()
    ]
    return Section(f"{title} (Gebru et al.)", [Fields(rows)], sources="datasheet.yaml")
