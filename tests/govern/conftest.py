"""Shared pieces of the ledger tests, including a naive RFC 9162 Merkle tree written straight
from the RFC's recursive definitions, to check the real code against independent hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.findings import Location, Rule, Severity, Threat
from bastion.govern.events import Event, Subject, file_digest
from bastion.govern.ledger import Ledger, init_ledger, record
from bastion.report import Report, render


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def largest_power_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def naive_mth(entries: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 section 2.1.1, recursively over the raw entries."""
    if not entries:
        return sha(b"")
    if len(entries) == 1:
        return sha(b"\x00" + entries[0])
    k = largest_power_below(len(entries))
    return sha(b"\x01" + naive_mth(entries[:k]) + naive_mth(entries[k:]))


def naive_path(m: int, entries: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 section 2.1.3.1."""
    if len(entries) == 1:
        return []
    k = largest_power_below(len(entries))
    if m < k:
        return [*naive_path(m, entries[:k]), naive_mth(entries[k:])]
    return [*naive_path(m - k, entries[k:]), naive_mth(entries[:k])]


def naive_subproof(m: int, entries: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 section 2.1.4.1."""
    if m == len(entries):
        return [] if complete else [naive_mth(entries)]
    k = largest_power_below(len(entries))
    if m <= k:
        return [*naive_subproof(m, entries[:k], complete), naive_mth(entries[k:])]
    return [*naive_subproof(m - k, entries[k:], False), naive_mth(entries[:k])]


def naive_proof(m: int, entries: list[bytes]) -> list[bytes]:
    return naive_subproof(m, entries, True) if 0 < m < len(entries) else []


def digest_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_event(i: int, kind: str = "scan") -> Event:
    return Event(
        kind=kind,
        actor=f"tester-{i % 3}",
        time="2024-05-01T12:00:00Z",
        subjects=(Subject(f"file-{i}", digest_of(f"file-{i}")),),
        details={"n": i},
    )


@pytest.fixture(scope="session")
def naive() -> SimpleNamespace:
    """The naive RFC 9162 functions: mth, path, proof, sha."""
    return SimpleNamespace(mth=naive_mth, path=naive_path, proof=naive_proof, sha=sha)


@pytest.fixture(scope="session")
def h() -> SimpleNamespace:
    """Helpers for building events: make_event(i, kind), digest_of(text)."""
    return SimpleNamespace(make_event=make_event, digest_of=digest_of)


@pytest.fixture(scope="session")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def new_ledger(tmp_path: Path, key: Ed25519PrivateKey) -> Callable[..., Ledger]:
    """A ledger of `n` scan events with a signed checkpoint at the end."""

    def build(n: int, name: str = "ledger.db") -> Ledger:
        ledger = Ledger.create(tmp_path / name, key.public_key(), origin="test.example/log")
        ledger.append_many([make_event(i) for i in range(n)])
        ledger.checkpoint(key)
        return ledger

    return build


# ---------------------------------------------------------------- demo assets (card, datasheet)
# A scikit-learn digits model saved with joblib, its training data as CSV (with two gaps), a
# ledger recording the data's history, the training run, a scan, a signature, an assessment
# and a deployment (fixed times), and Bastion reports with metrics and PII/poisoning findings.

ROWS = 240


@dataclass(frozen=True)
class Demo:
    root: Path
    model: Path
    data: Path
    ledger: Path
    results: Path
    findings: Path
    card_yaml: Path
    datasheet_yaml: Path


PII = Rule("BST-TEST-PII-001", "pii-in-column", "Personal data found.", "Drop the column.",
           Threat.PRIVACY, Severity.HIGH, ("ML03",))
POISON = Rule("BST-TEST-POI-001", "label-issue", "Suspicious labels.", "Review the rows.",
              Threat.DATA_POISONING, Severity.MEDIUM, ("ML02", "AML.T0020"))


def build_demo(root: Path) -> Demo:
    # Imported here: only the card and datasheet tests pay for scikit-learn.
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    x, y = digits.data[:ROWS], digits.target[:ROWS]
    model = root / "digits.joblib"
    joblib.dump(LogisticRegression(max_iter=200).fit(x, y), model)
    data = root / "digits.csv"
    table = np.column_stack([x, y]).astype(object)
    table[:, -1] = y  # integer class labels
    table[3, 5] = table[7, 5] = ""  # two missing pixel values
    header = ",".join([f"px{i}" for i in range(x.shape[1])] + ["digit"])
    lines = [",".join(str(v) for v in row) for row in table]
    data.write_text(header + "\n" + "\n".join(lines) + "\n", encoding="utf-8")

    ledger = root / "ledger.db"
    init_ledger(ledger, origin="demo.example/ledger")
    model_digest, data_digest = file_digest(model), file_digest(data)
    first_version = digest_of("digits v1")
    results = root / "assess.json"
    results.write_text(render(Report(
        "assess evasion --model digits.joblib",
        [POISON.finding("robust accuracy under PGD below 0.5", Location("digits.joblib"))],
        metrics={"clean_accuracy": 0.9875, "pgd": {"eps=0.1": {"robust_accuracy": 0.3125}}},
    ), "json"), encoding="utf-8")
    findings = root / "data-checks.json"
    findings.write_text(render(Report(
        "data check digits.csv",
        [
            PII.finding("column px0 looks like phone numbers", Location("digits.csv", "px0")),
            POISON.finding("12 rows with likely flipped labels", Location("digits.csv")),
        ],
    ), "json"), encoding="utf-8")
    events = [
        Event("data-diff", "ana", "2024-05-01T09:00:00Z",
              (Subject("digits-v1.csv", first_version),), (),
              {"rows_added": 250, "note": "initial import"}),
        Event("data-diff", "ana", "2024-05-02T09:00:00Z", (Subject("digits.csv", data_digest),),
              (first_version,), {"rows_removed": 10, "reason": "duplicates"}),
        Event("train", "ben", "2024-05-03T10:00:00Z", (Subject("digits.joblib", model_digest),),
              (data_digest,), {"algorithm": "LogisticRegression", "max_iter": 200}),
        Event("scan", "ci", "2024-05-03T10:05:00Z", (Subject("digits.joblib", model_digest),),
              (), {"findings": {"low": 1}}),
        Event("sign", "ci", "2024-05-03T10:06:00Z", (Subject("digits.joblib", model_digest),),
              (), {"identity": "ci@example.org"}),
        Event("assess", "ci", "2024-05-03T11:00:00Z", (Subject("assess.json", file_digest(
              results)),), (model_digest,), {"clean_accuracy": 0.9875}),
        Event("deploy", "ops", "2024-05-04T08:00:00Z", (Subject("digits-endpoint",
              digest_of("endpoint config")),), (model_digest,), {"environment": "staging"}),
    ]
    record(ledger, events)
    card_yaml = root / "card.yaml"
    card_yaml.write_text(
        "name: digits-classifier\nversion: '1.0'\nlicense: apache-2.0\n"
        "description: Recognises handwritten digits 0-9 from 8x8 grey-scale scans.\n"
        "owners:\n  - name: ML team\n    contact: ml@example.org\n"
        "tags: [vision, demo]\ntask: image-classification\napproach: supervised\n"
        "evaluation_dataset: digits-holdout\n"
        "intended_use:\n  primary_uses: [Teaching Bastion's workflow]\n"
        "  out_of_scope: [Reading postal codes in production]\n"
        "limitations: [Trained on 240 scans from one source]\n"
        "ethical_considerations:\n  - name: Over-trust in a demo model\n"
        "    mitigation: Labelled as a demo in every output\n",
        encoding="utf-8",
    )
    datasheet_yaml = root / "datasheet.yaml"
    datasheet_yaml.write_text(
        "name: digits\ndescription: 8x8 scans of handwritten digits (scikit-learn).\n"
        "license: BSD-3-Clause\nmotivation:\n  purpose: Teaching and testing classifiers.\n"
        "composition:\n  instances: One scanned handwritten digit per row.\n"
        "  labels: The digit written, 0-9.\n"
        "maintenance:\n  maintainer: ML team\n",
        encoding="utf-8",
    )
    return Demo(root, model, data, ledger, results, findings, card_yaml, datasheet_yaml)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return build_demo(tmp_path_factory.mktemp("demo"))
