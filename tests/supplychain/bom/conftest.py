"""Demo assets for the ML-BOM tests: a small scikit-learn model, a CSV with gaps, a Bastion
assessment report, and a validator built straight from the official CycloneDX 1.6 schema
files (with the SPDX and JSF schemas it references resolved offline)."""

from __future__ import annotations

import json
from pathlib import Path

import cyclonedx.schema
import joblib
import numpy as np
import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from sklearn.linear_model import LogisticRegression

from bastion.findings import Location, Severity
from bastion.report import Report, render
from bastion.supplychain.scan.rules import PKL_TRUSTED

SCHEMAS = Path(cyclonedx.schema.__file__).parent / "_res"
BASE = "http://cyclonedx.org/schema/"


@pytest.fixture(scope="session")
def cdx16() -> Draft7Validator:
    def resource(name: str) -> Resource:
        return Resource.from_contents(json.loads((SCHEMAS / name).read_text("utf-8")))

    registry = Registry().with_resources(
        (BASE + name, resource(name))
        for name in ("spdx.SNAPSHOT.schema.json", "jsf-0.82.SNAPSHOT.schema.json")
    )
    schema = json.loads((SCHEMAS / "bom-1.6.SNAPSHOT.schema.json").read_text("utf-8"))
    return Draft7Validator(schema, registry=registry)


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bom-assets")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    joblib.dump(LogisticRegression().fit(x, y), root / "model.joblib")
    rows = ["f0,f1,f2,label"] + [
        f"{a:.3f},{b:.3f},{c:.3f},{t}" for (a, b, c), t in zip(x, y, strict=True)
    ]
    rows[3] = "0.1,,0.2,1"  # one missing feature cell
    (root / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    report = Report(
        "assess evasion --model model.joblib",
        [
            PKL_TRUSTED.finding(
                "robust accuracy below target", Location("model.joblib"), severity=Severity.HIGH
            )
        ],
        metrics={"clean_accuracy": 0.95, "pgd": {"robust_accuracy": 0.25}, "note": "text"},
    )
    (root / "results.json").write_text(render(report, "json"), encoding="utf-8")
    (root / "card.yaml").write_text(
        "name: churn-model\nversion: '1.2'\nlicense: apache-2.0\ntask: classification\n"
        "approach: supervised\nlimitations: [Trained on synthetic data only]\n"
        "intended_use:\n  primary_uses: [demo]\n  primary_users: [analysts]\n"
        "ethical_considerations:\n  - name: misuse for credit decisions\n"
        "    mitigation: not licensed for credit scoring\n",
        encoding="utf-8",
    )
    return {p.stem: p for p in root.iterdir()}
