"""The shared shape of everything Bastion reports: rules, findings and their taxonomy.

Checks return findings; renderers turn them into tables, JSON or SARIF. A finding always
points to a `Rule`, which carries the stable id, the help text and the references to the
OWASP Machine Learning Security Top 10 and MITRE ATLAS.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.IntEnum):
    """Ordered so that `finding.severity >= Severity.HIGH` reads as it should."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ValueError(f"unknown severity {text!r} (expected one of: {names})") from None

    def __str__(self) -> str:
        return self.name.lower()


class Threat(str, enum.Enum):
    """The threats of Bastion's mission; every finding belongs to exactly one."""

    SUPPLY_CHAIN = "supply-chain"
    DATA_POISONING = "data-poisoning"
    MODEL_STEALING = "model-stealing"
    NETWORK = "network"
    ADVERSARIAL = "adversarial-examples"
    PRIVACY = "privacy"
    MODEL_INVERSION = "model-inversion"
    DOCUMENTATION = "documentation"


# OWASP Machine Learning Security Top 10 (2023) and MITRE ATLAS technique ids.
OWASP_ML = {
    "ML01": "Input Manipulation Attack",
    "ML02": "Data Poisoning Attack",
    "ML03": "Model Inversion Attack",
    "ML04": "Membership Inference Attack",
    "ML05": "Model Theft",
    "ML06": "AI Supply Chain Attacks",
    "ML07": "Transfer Learning Attack",
    "ML08": "Model Skewing",
    "ML09": "Output Integrity Attack",
    "ML10": "Model Poisoning",
}
ATLAS = {
    "AML.T0010": "ML Supply Chain Compromise",
    "AML.T0010.003": "ML Supply Chain Compromise: Model",
    "AML.T0011.000": "User Execution: Unsafe ML Artifacts",
    "AML.T0015": "Evade ML Model",
    "AML.T0018": "Backdoor ML Model",
    "AML.T0020": "Poison Training Data",
    "AML.T0024.000": "Exfiltration via ML Inference API: Infer Training Data Membership",
    "AML.T0024.001": "Exfiltration via ML Inference API: Invert ML Model",
    "AML.T0024.002": "Exfiltration via ML Inference API: Extract ML Model",
    "AML.T0029": "Denial of ML Service",
    "AML.T0040": "ML Model Inference API Access",
    "AML.T0043": "Craft Adversarial Data",
    "AML.T0049": "Exploit Public-Facing Application",
}


@dataclass(frozen=True)
class Rule:
    """What a class of findings means; one per stable rule id."""

    rule_id: str
    name: str
    help: str
    remediation: str
    threat: Threat
    default_severity: Severity
    references: tuple[str, ...]

    def __post_init__(self) -> None:
        for ref in self.references:
            if ref not in OWASP_ML and ref not in ATLAS:
                raise ValueError(f"rule {self.rule_id}: unknown reference {ref!r}")

    def finding(
        self,
        title: str,
        location: Location,
        *,
        severity: Severity | None = None,
        evidence: dict[str, Any] | None = None,
        remediation: str | None = None,
    ) -> Finding:
        return Finding(
            rule_id=self.rule_id,
            title=title,
            severity=self.default_severity if severity is None else severity,
            threat=self.threat,
            location=location,
            evidence=dict(evidence or {}),
            remediation=remediation or self.remediation,
            references=self.references,
        )


@dataclass(frozen=True)
class Location:
    """Where a finding was made: a file, optionally a member inside it and a byte offset."""

    path: str
    member: str | None = None
    offset: int | None = None

    def inside(self, member: str) -> Location:
        """The location of `member` nested in this one (a zip member, a nested pickle)."""
        inner = member if self.member is None else f"{self.member}/{member}"
        return Location(self.path, inner, None)

    def at(self, offset: int | None) -> Location:
        return Location(self.path, self.member, offset)

    def __str__(self) -> str:
        text = self.path
        if self.member:
            text += f"!{self.member}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text


@dataclass(frozen=True)
class Finding:
    rule_id: str
    title: str
    severity: Severity
    threat: Threat
    location: Location
    evidence: dict[str, Any] = field(default_factory=dict)
    remediation: str = ""
    references: tuple[str, ...] = ()


_REGISTRY: dict[str, Rule] = {}


def register(rule: Rule) -> Rule:
    """Record a rule so renderers can describe it; ids are unique across Bastion."""
    existing = _REGISTRY.get(rule.rule_id)
    if existing is not None and existing != rule:
        raise ValueError(f"rule id {rule.rule_id} registered twice with different content")
    _REGISTRY[rule.rule_id] = rule
    return rule


def rule(rule_id: str) -> Rule:
    return _REGISTRY[rule_id]


def max_severity(findings: list[Finding]) -> Severity | None:
    return max((f.severity for f in findings), default=None)
