"""The parts of a model card or datasheet only people can answer, as short YAML files
(`--user card.yaml`, `--user datasheet.yaml`), validated strictly: an unknown key is a typo
that would otherwise vanish silently from the document, so it is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from bastion.errors import InputError

MAX_YAML_BYTES = 1 << 20


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Owner(Strict):
    name: str
    contact: str | None = None
    role: str | None = None


class IntendedUse(Strict):
    primary_uses: list[str] = []
    primary_users: list[str] = []
    out_of_scope: list[str] = []


class Risk(Strict):
    name: str
    mitigation: str | None = None


class CardInput(Strict):
    """card.yaml: every field optional; the card prompts for what is missing."""

    name: str | None = None
    version: str | None = None
    description: str | None = None
    owners: list[Owner] = []
    license: str | None = Field(None, description="SPDX id, e.g. apache-2.0")
    tags: list[str] = []
    task: str | None = None
    approach: (
        Literal["supervised", "unsupervised", "reinforcement-learning", "semi-supervised",
                "self-supervised"] | None
    ) = None
    architecture: str | None = None
    evaluation_dataset: str | None = None
    intended_use: IntendedUse = IntendedUse()
    limitations: list[str] = []
    tradeoffs: list[str] = []
    ethical_considerations: list[Risk] = []
    development_process: str | None = None
    human_oversight: str | None = None
    monitoring: str | None = None
    risk_management: str | None = None
    changes: list[str] = []
    standards: list[str] = []


# Datasheets for Datasets (Gebru et al.): the questions of each section, in short. The
# keys are what datasheet.yaml uses; unanswered ones are shown as prompts.
GEBRU_SECTIONS: dict[str, tuple[str, dict[str, str]]] = {
    "motivation": ("Motivation", {
        "purpose": "For what purpose was the dataset created; which task or gap did it serve?",
        "creators": "Who created it, and on behalf of which team or organisation?",
        "funding": "Who funded its creation?",
    }),
    "composition": ("Composition", {
        "instances": "What does one instance represent (people, documents, images ...)?",
        "sampling": "Is it all possible instances or a sample; if a sample, how was it drawn?",
        "labels": "What is each instance's label, and how was it assigned?",
        "confidential": "Does it contain confidential or personal data? Which?",
        "subpopulations": "Does it identify subpopulations (age, gender ...), and how?",
    }),
    "collection_process": ("Collection process", {
        "method": "How was the data acquired (sensors, scraping, surveys, other datasets)?",
        "collectors": "Who collected it, and how were they compensated?",
        "timeframe": "Over what period was it collected?",
        "consent": "Were the people concerned informed, and did they consent? How?",
        "ethics_review": "Was an ethical review conducted? With what outcome?",
    }),
    "preprocessing": ("Preprocessing, cleaning, labelling", {
        "steps": "What preprocessing, cleaning or labelling was done?",
        "raw_data": "Was the raw data kept? Where can it be obtained?",
        "software": "Which software was used for preprocessing?",
    }),
    "uses": ("Uses", {
        "used_for": "What has the dataset been used for already?",
        "recommended": "What other tasks could it be used for?",
        "not_recommended": "What should it not be used for?",
        "impact": "Could anything about its composition or collection harm future uses?",
    }),
    "distribution": ("Distribution", {
        "recipients": "Will it be shared outside the team that created it? With whom?",
        "how": "How is it distributed (archive, API, registry)?",
        "license": "Under which license or terms of use?",
        "restrictions": "Do export controls or other regulatory restrictions apply?",
    }),
    "maintenance": ("Maintenance", {
        "maintainer": "Who maintains the dataset?",
        "contact": "How can the maintainer be contacted?",
        "updates": "Will it be updated (errors, new instances)? How are users told?",
        "retention": "Are there limits on how long data about people is kept?",
        "contributions": "Can others extend or contribute to it? How?",
    }),
}


class _DatasheetBase(Strict):
    name: str | None = None
    description: str | None = None
    owners: list[Owner] = []
    license: str | None = None

    def answer(self, section: str, question: str) -> str | None:
        answers = getattr(self, section)
        return None if answers is None else getattr(answers, question)


def _section(key: str, questions: dict[str, str]) -> type[Strict]:
    fields: dict[str, Any] = {q: (str | None, None) for q in questions}
    return create_model(f"Datasheet_{key}", __base__=Strict, **fields)


# datasheet.yaml: a name, a description, owners, and answers by Gebru section, each section
# a mapping of the question keys above to answers.
DatasheetInput = create_model(
    "DatasheetInput",
    __base__=_DatasheetBase,
    **{key: (_section(key, qs) | None, None) for key, (_, qs) in GEBRU_SECTIONS.items()},
)


M = TypeVar("M", bound=Strict)


def load_user_yaml(path: str | Path | None, model: type[M]) -> M:
    """Parse and validate a user YAML file; None gives an empty (all-prompts) document."""
    if path is None:
        return model()
    source = Path(path)
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{source}: no such YAML file") from None
    except OSError as exc:
        raise InputError(f"{source}: cannot read ({exc.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise InputError(f"{source}: larger than {MAX_YAML_BYTES} bytes; keep it short")
    try:
        document = yaml.safe_load(raw) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{source}: malformed YAML{where}: {problem}") from None
    if not isinstance(document, dict):
        raise InputError(f"{source}: the top level must be a mapping of keys to values")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InputError(f"{source}: {_first_error(exc, model)}") from None


def _first_error(exc: ValidationError, model: type[Strict]) -> str:
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, error["loc"][:-1])
        return f"unknown key {where!r} (allowed here: {', '.join(allowed)}){more}"
    return f"{where or 'document'}: {error['msg']}{more}"


def _allowed_keys(model: type[BaseModel], path: tuple[object, ...]) -> list[str]:
    """The field names valid at `path` (list indices skipped)."""
    current: type[BaseModel] = model
    for step in path:
        if isinstance(step, int):
            continue
        annotation = current.model_fields[str(step)].annotation
        current = next(
            (a for a in _members(annotation) if isinstance(a, type) and issubclass(a, BaseModel)),
            current,
        )
    return list(current.model_fields)


def _members(annotation: object) -> list[object]:
    """The types inside `X | None` or `list[X]`."""
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [m for arg in args for m in _members(arg)]
