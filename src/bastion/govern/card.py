"""Model cards: what the ledger and Bastion's reports establish about a model, plus what
only its owners can say (card.yaml), as Markdown with Hugging Face front matter and as HTML.

Sections follow Google's Model Card Toolkit (model details, model parameters, quantitative
analysis, considerations), then the model's recorded lifecycle, then a checklist of the
EU AI Act Annex IV items a team can answer from data. Nothing is invented: a part nobody
provided is shown as a prompt naming the card.yaml key or the command that supplies it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from bastion.govern.document import NOT_PROVIDED, Document, Fields, Items, Section, Table, Text
from bastion.govern.lineage import History, Record
from bastion.govern.results import Result
from bastion.govern.userdocs import CardInput
from bastion.supplychain.bom import ModelFile

SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")
NOTABLE = {"critical", "high", "medium"}
SHORT_DIGEST = 12


def yaml_prompt(key: str) -> str:
    return f"add `{key}` to card.yaml (`bastion card --user card.yaml`)"


LEDGER_PROMPT = (
    "record the model's history with `bastion ledger append LEDGER --kind train --file MODEL "
    "--parent DATASET_DIGEST` and pass `--ledger LEDGER`"
)
RESULTS_PROMPT = "run Bastion's assessments with `--format json` and pass them with `--results`"


def short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:SHORT_DIGEST]


def joined(values: Sequence[str]) -> str | None:
    return "; ".join(values) if values else None


@dataclass(frozen=True)
class CardInputs:
    model: ModelFile
    user: CardInput
    results: Sequence[Result]
    history: History | None

    @property
    def digest(self) -> str:
        return "sha256:" + self.model.sha256

    @property
    def name(self) -> str:
        return self.user.name or self.model.path.name

    @property
    def records(self) -> list[Record]:
        return self.history.records if self.history else []

    def datasets(self) -> list[tuple[str, str]]:
        """(name, digest) of the training data the ledger names."""
        if self.history is None:
            return []
        return [
            (self.history.name_of(d) or "unnamed", d) for d in self.history.inputs_of(self.digest)
        ]


def build_card(inputs: CardInputs) -> Document:
    sections = [
        _details(inputs),
        _parameters(inputs),
        _quantitative(inputs),
        *_considerations(inputs),
        _lifecycle(inputs),
        _annex_iv(inputs),
    ]
    return Document(
        title=f"Model card: {inputs.name}",
        summary=(
            f"Model file `{inputs.model.path.name}` (sha256 {inputs.model.sha256}). "
            "Written by `bastion card` from the ledger, Bastion's reports and card.yaml; "
            "parts marked 'Not provided' need an answer from the model's owners."
        ),
        sections=sections,
        front_matter=_front_matter(inputs),
    )


def _front_matter(inputs: CardInputs) -> dict[str, object]:
    """Hugging Face model card metadata: license, tags, model-index with the metrics."""
    user = inputs.user
    front: dict[str, object] = {}
    if user.license:
        front["license"] = user.license
    front["tags"] = list(dict.fromkeys(["bastion", *user.tags]))
    metrics = [m for r in inputs.results for m in r.metrics]
    if metrics:
        dataset = user.evaluation_dataset or "unspecified"
        front["model-index"] = [{
            "name": inputs.name,
            "results": [{
                "task": {"type": user.task or "unspecified"},
                "dataset": {"name": dataset, "type": dataset},
                "metrics": [
                    {"type": m.name, "value": m.value, "name": f"{m.name} ({m.slice})"}
                    for m in metrics
                ],
            }],
        }]
    return front


def _details(inputs: CardInputs) -> Section:
    user, model = inputs.user, inputs.model
    owners = [
        o.name + (f" ({o.role})" if o.role else "") + (f" <{o.contact}>" if o.contact else "")
        for o in user.owners
    ]
    ledger = inputs.history.status if inputs.history else None
    return Section("Model details", [Fields([
        ("Name", inputs.name, yaml_prompt("name")),
        ("Version", user.version, yaml_prompt("version")),
        ("Description", user.description, yaml_prompt("description")),
        ("Owners", joined(owners), yaml_prompt("owners")),
        ("License", user.license, yaml_prompt("license")),
        ("File", f"{model.path.name} ({model.size} bytes)", ""),
        ("SHA-256", model.sha256, ""),
        ("Format (by content)", ", ".join(model.formats) or None,
         "the file's content matches no format Bastion knows"),
        ("Ledger", ledger, LEDGER_PROMPT),
    ])], sources="card.yaml, the model file, the ledger")


def _parameters(inputs: CardInputs) -> Section:
    user = inputs.user
    runs = inputs.history.produced(inputs.digest, "train") if inputs.history else []
    data_rows = [[name, short(digest)] for name, digest in inputs.datasets()]
    return Section("Model parameters", [
        Fields([
            ("Task", user.task, yaml_prompt("task")),
            ("Learning approach", user.approach, yaml_prompt("approach")),
            ("Architecture", user.architecture, yaml_prompt("architecture")),
        ]),
        Table(["training data", "sha256"], data_rows, f"Not provided: {LEDGER_PROMPT}."),
        Table(["entry", "time", "actor", "details"],
              [[str(r.index), r.time, r.actor, r.details_text] for r in runs],
              "No training run of this model is recorded in the ledger."),
    ], sources="card.yaml and the ledger's `train` events")


def _quantitative(inputs: CardInputs) -> Section:
    metric_rows = [
        [r.name, m.name, m.slice, m.text] for r in inputs.results for m in r.metrics
    ]
    summary_rows = []
    for result in inputs.results:
        counts = Counter(f.severity for f in result.findings)
        summary_rows.append([result.command, *(str(counts[s]) for s in SEVERITY_ORDER)])
    notable = sorted(
        (f for r in inputs.results for f in r.findings if f.severity in NOTABLE),
        key=lambda f: (SEVERITY_ORDER.index(f.severity), f.rule_id),
    )
    return Section("Quantitative analysis", [
        Table(["report", "metric", "slice", "value"], metric_rows,
              f"Not provided: {RESULTS_PROMPT}."),
        Table(["report", *SEVERITY_ORDER], summary_rows, "No assessment reports given."),
        Table(["severity", "rule", "finding", "remediation"],
              [[f.severity, f.rule_id, f.title, f.remediation] for f in notable],
              "No findings of medium severity or above in the reports given."),
    ], sources="Bastion JSON reports (`--results`)")


def _considerations(inputs: CardInputs) -> list[Section]:
    user = inputs.user
    use = user.intended_use
    return [
        Section("Considerations", [Fields([
            ("Intended uses", joined(use.primary_uses), yaml_prompt("intended_use.primary_uses")),
            ("Intended users", joined(use.primary_users),
             yaml_prompt("intended_use.primary_users")),
            ("Out of scope", joined(use.out_of_scope), yaml_prompt("intended_use.out_of_scope")),
        ])], sources="card.yaml"),
        Section("Limitations", [Items(list(user.limitations), yaml_prompt("limitations"))],
                level=3),
        Section("Trade-offs", [Items(list(user.tradeoffs), yaml_prompt("tradeoffs"))], level=3),
        Section("Ethical considerations", [Table(
            ["risk", "mitigation"],
            [[r.name, r.mitigation or "Not provided"] for r in user.ethical_considerations],
            f"Not provided: {yaml_prompt('ethical_considerations')}.",
        )], level=3),
    ]


def _lifecycle(inputs: CardInputs) -> Section:
    rows = [
        [str(r.index), r.time, r.kind, r.actor, r.subject_names, r.details_text]
        for r in inputs.records
    ]
    empty = (
        "The ledger has no events for this model's digest."
        if inputs.history else f"Not provided: {LEDGER_PROMPT}."
    )
    return Section("Lifecycle record", [
        Text(
            "Every ledger event in this model's lineage: its training data and training runs, "
            "scans, signatures, assessments, deployments and documents."
        ),
        Table(["entry", "time", "kind", "actor", "subjects", "details"], rows, empty),
        Text("Changes described by the owners:"),
        Items(list(inputs.user.changes), yaml_prompt("changes")),
    ], sources="the ledger (`bastion ledger log LEDGER --subject DIGEST`)")


def _annex_iv(inputs: CardInputs) -> Section:
    user = inputs.user
    kinds = Counter(r.kind for r in inputs.records)
    datasets = inputs.datasets()
    metrics = sum(len(r.metrics) for r in inputs.results)
    findings = sum(len(r.findings) for r in inputs.results)

    def with_record(text: str | None, recorded: str | None, key: str) -> str | None:
        """The owners' answer and what the record shows; when only the record speaks, the
        missing answer is still asked for."""
        if text is None and recorded is not None:
            return f"{recorded} {NOT_PROVIDED}: {yaml_prompt(key)}."
        return " ".join(p for p in (text, recorded) if p) or None

    rows = [
        ("1. General description and intended purpose", user.description,
         yaml_prompt("description")),
        ("2(a) Development methods and steps", with_record(
            user.development_process,
            f"{kinds['train']} training run(s) recorded in the ledger." if kinds["train"]
            else None, "development_process"), yaml_prompt("development_process")),
        ("2(b) Design choices (approach, architecture)", joined(
            [v for v in (user.approach, user.architecture) if v]),
         yaml_prompt("approach` and `architecture")),
        ("2(d) Data requirements and provenance", (
            "Training data by digest: " + "; ".join(f"{n} ({short(d)})" for n, d in datasets)
            if datasets else None), LEDGER_PROMPT),
        ("2(e) Human oversight measures", user.human_oversight, yaml_prompt("human_oversight")),
        ("2(g) Validation and testing", (
            f"{len(inputs.results)} Bastion report(s), {findings} finding(s); "
            f"{kinds['assess']} assessment(s) recorded in the ledger."
            if inputs.results or kinds["assess"] else None), RESULTS_PROMPT),
        ("3. Monitoring, functioning and control", with_record(
            user.monitoring,
            f"{kinds['deploy']} deployment(s) recorded in the ledger." if kinds["deploy"]
            else None, "monitoring"), yaml_prompt("monitoring")),
        ("4. Performance metrics", (
            f"{metrics} metric(s); see Quantitative analysis." if metrics else None),
         RESULTS_PROMPT),
        ("5. Risk management system", user.risk_management, yaml_prompt("risk_management")),
        ("6. Changes over the lifecycle", with_record(
            joined(list(user.changes)),
            f"{len(inputs.records)} ledger event(s); see Lifecycle record."
            if inputs.records else None, "changes"), yaml_prompt("changes")),
        ("7. Standards applied", joined(list(user.standards)), yaml_prompt("standards")),
    ]
    return Section("EU AI Act Annex IV (technical documentation)", [
        Text(
            "The Annex IV items that data can answer, each from the ledger, the reports or "
            "card.yaml. This is an aid to writing the technical documentation, not a "
            "conformity assessment."
        ),
        Fields(rows),
    ], sources="the sections above")
