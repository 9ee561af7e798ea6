"""Documentation completeness: a model card for the model and a datasheet for its training
data, each with the sections reviewers and incident responders look for (Mitchell et al.'s
model cards; Gebru et al.'s datasheets for datasets)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from pathlib import Path

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import AuditConfig, DataSet
from bastion.findings import Finding, Location, Rule, Severity, Threat, register

CARD_NAMES = ("MODEL_CARD.md", "model_card.md", "model-card.md", "MODELCARD.md")
DATASHEET_NAMES = ("DATASHEET.md", "datasheet.md", "data-sheet.md", "DATA_SHEET.md")
# Section -> words any one of which in a heading counts as that section. Model Card
# Toolkit's section names count too (what `bastion card` writes): its "considerations" hold
# the intended uses, "model parameters" the training data, "quantitative analysis" the
# evaluation.
CARD_SECTIONS = {
    "intended use": ("intended use", "uses", "considerations"),
    "training data": ("training data", "data", "model parameters"),
    "evaluation": ("evaluation", "metrics", "performance", "quantitative analysis"),
    "limitations": ("limitations", "caveats", "risks"),
    "ethical considerations": ("ethical", "ethics"),
}
DATASHEET_SECTIONS = {
    "motivation": ("motivation",),
    "composition": ("composition",),
    "collection process": ("collection",),
    "preprocessing": ("preprocessing", "cleaning", "labeling", "labelling"),
    "uses": ("uses",),
    "distribution": ("distribution",),
    "maintenance": ("maintenance",),
}
_RECHECK = "Re-check with `bastion audit --only documentation`."
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
MAX_DOC_BYTES = 1 << 20


def _rule(rule_id: str, name: str, help_text: str, fix: str, severity: Severity,
          references: tuple[str, ...]) -> Rule:
    return register(Rule(rule_id, name, help_text, f"{fix} {_RECHECK}", Threat.DOCUMENTATION,
                         severity, references))


NO_CARD = _rule(
    "BST-AUD-DOC-001", "model-card-missing",
    "The project has no model card: nobody downstream can tell what the model is for, what "
    "it was trained on, how it was evaluated or where it fails, and an incident responder "
    "cannot tell which model or data is involved.",
    "Write MODEL_CARD.md beside bastion.toml (or name it in [documentation] model_card), "
    "with the sections listed in the evidence; `bastion card` drafts one from the ledger.",
    Severity.MEDIUM, ("ML06", "AML.T0010.003"),
)
CARD_INCOMPLETE = _rule(
    "BST-AUD-DOC-002", "model-card-incomplete",
    "The model card lacks sections that reviewers rely on.",
    "Add the missing sections (named in the evidence) as headings in the model card.",
    Severity.LOW, ("ML06", "AML.T0010.003"),
)
NO_DATASHEET = _rule(
    "BST-AUD-DOC-003", "datasheet-missing",
    "The training data has no datasheet: where the data came from, how it was collected and "
    "labelled and who maintains it is undocumented, so a poisoned or mislabelled source "
    "cannot be traced.",
    "Write DATASHEET.md beside bastion.toml (or name it in [documentation] datasheet) with "
    "the sections listed in the evidence; `bastion datasheet` drafts one from the data.",
    Severity.MEDIUM, ("ML02", "AML.T0020"),
)
DATASHEET_INCOMPLETE = _rule(
    "BST-AUD-DOC-004", "datasheet-incomplete",
    "The datasheet lacks sections of Gebru et al.'s datasheet questions.",
    "Add the missing sections (named in the evidence) as headings in the datasheet.",
    Severity.LOW, ("ML02", "AML.T0020"),
)


def _find(config: AuditConfig, declared: str | None, names: tuple[str, ...]) -> Path | None:
    if declared:
        path = config.resolve(declared)
        return path if path.is_file() else None
    return next((config.root / n for n in names if (config.root / n).is_file()), None)


def missing_sections(text: str, sections: dict[str, tuple[str, ...]]) -> list[str]:
    headings = [h.lower() for h in _HEADING.findall(text)]
    return [
        section
        for section, words in sections.items()
        if not any(word in heading for heading in headings for word in words)
    ]


def _shown(config: AuditConfig, path: Path) -> str:
    try:
        return shlex.quote(str(path.relative_to(config.root)))
    except ValueError:
        return shlex.quote(str(path))


def _with_ledger(config: AuditConfig, command: str) -> str:
    if config.ledger is None:
        return command
    return f"{command} --ledger {_shown(config, config.resolve(config.ledger.path))}"


def _card_command(config: AuditConfig, target: Path) -> str:
    """The exact `bastion card` command that drafts the model card at `target`."""
    model = _shown(config, config.model_paths()[0])
    return _with_ledger(config, f"bastion card --model {model} --out {_shown(config, target)}")


def _datasheet_command(config: AuditConfig, train: DataSet, target: Path) -> str:
    """The exact `bastion datasheet` command that drafts the datasheet at `target`."""
    command = f"bastion datasheet --data {_shown(config, config.resolve(train.path))}"
    if train.label:
        command += f" --label {shlex.quote(train.label)}"
    return _with_ledger(config, f"{command} --out {_shown(config, target)}")


def _review(
    config: AuditConfig, declared: str | None, names: tuple[str, ...],
    sections: dict[str, tuple[str, ...]], missing_rule: Rule, incomplete_rule: Rule, what: str,
    draft: Callable[[Path], str],
) -> tuple[list[Finding], dict[str, object]]:
    path = _find(config, declared, names)
    if path is None:
        expected = config.resolve(declared) if declared else config.root / names[0]
        finding = missing_rule.finding(
            f"No {what} in the project", Location(str(expected)),
            evidence={"looked_for": [declared] if declared else list(names),
                      "sections": list(sections)},
            remediation=f"Draft it with `{draft(expected)}`, then "
            f"complete the sections listed in the evidence. {_RECHECK}",
        )
        return [finding], {"present": False}
    with open(path, "rb") as handle:
        text = handle.read(MAX_DOC_BYTES).decode("utf-8", errors="replace")
    missing = missing_sections(text, sections)
    facts: dict[str, object] = {"present": True, "path": str(path), "missing_sections": missing}
    if not missing:
        return [], facts
    finding = incomplete_rule.finding(
        f"The {what} lacks {len(missing)} section(s): {', '.join(missing)}", Location(str(path)),
        evidence={"missing_sections": missing},
    )
    return [finding], facts


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    docs = config.documentation
    findings, card = _review(config, docs.model_card, CARD_NAMES, CARD_SECTIONS, NO_CARD,
                             CARD_INCOMPLETE, "model card",
                             lambda target: _card_command(config, target))
    metrics: dict[str, object] = {"model_card": card}
    train = config.data.train
    if train is not None:
        more, sheet = _review(config, docs.datasheet, DATASHEET_NAMES, DATASHEET_SECTIONS,
                              NO_DATASHEET, DATASHEET_INCOMPLETE, "datasheet",
                              lambda target: _datasheet_command(config, train, target))
        findings += more
        metrics["datasheet"] = sheet
    return CheckResult(findings=findings, metrics=metrics)


def _applies(config: AuditConfig) -> bool:
    return config.model is not None


CHECK = Check(
    name="documentation",
    title="Model card and datasheet",
    threats=(Threat.DOCUMENTATION,),
    applies=_applies,
    run=_run,
)
