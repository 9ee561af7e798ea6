"""`bastion bom`: every document validates against the official CycloneDX 1.6 schema, and
carries the model card, the datasets and the dependency graph it should."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jsonschema import Draft7Validator
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.govern.ledger import Ledger
from bastion.govern.results import load_result
from bastion.govern.userdocs import CardInput
from bastion.supplychain.bom import build_bom, inspect_data, inspect_model, validation_error
from bastion.supplychain.pydeps import Package, PackageSet, from_environment

runner = CliRunner()


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_valid(validator: Draft7Validator, document: dict) -> None:
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, [f"{e.message} at {list(e.absolute_path)}" for e in errors[:5]]


def component(document: dict, ref: str) -> dict:
    return next(c for c in document["components"] if c["bom-ref"] == ref)


def test_full_bom_from_the_environment(assets: dict[str, Path], cdx16: Draft7Validator) -> None:
    result = runner.invoke(
        app,
        [
            "bom", "--model", str(assets["model"]), "--data", str(assets["train"]),
            "--label", "label", "--card-data", str(assets["results"]),
            "--user", str(assets["card"]), "--out", "-",
        ],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert_valid(cdx16, document)
    assert document["specVersion"] == "1.6"

    model = component(document, "model:model.joblib")
    assert model["type"] == "machine-learning-model"
    assert model["name"] == "churn-model" and model["version"] == "1.2"
    assert model["hashes"] == [{"alg": "SHA-256", "content": sha256_hex(assets["model"])}]
    assert model["licenses"][0]["license"]["id"] == "Apache-2.0"
    card = model["modelCard"]
    assert card["modelParameters"]["approach"] == {"type": "supervised"}
    assert card["modelParameters"]["datasets"] == [{"ref": "data:train.csv"}]
    metrics = {(m["type"], m["slice"]): m["value"] for m in card["quantitativeAnalysis"][
        "performanceMetrics"]}
    assert metrics == {("clean_accuracy", "assess"): "0.95", ("robust_accuracy", "assess/pgd"):
                       "0.25"}
    considerations = card["considerations"]
    assert considerations["users"] == ["analysts"]
    assert considerations["technicalLimitations"][0] == "Trained on synthetic data only"
    assert any("BST-SCAN-PKL-003 (high)" in t for t in considerations["technicalLimitations"])
    assert considerations["ethicalConsiderations"] == [
        {"name": "misuse for credit decisions", "mitigationStrategy":
         "not licensed for credit scoring"}
    ]

    data = component(document, "data:train.csv")
    assert data["type"] == "data"
    assert data["hashes"][0]["content"] == sha256_hex(assets["train"])
    props = {p["name"]: p["value"] for p in data["data"][0]["contents"]["properties"]}
    assert props["bastion:rows"] == "40" and props["bastion:features"] == "3"
    assert props["bastion:missing-values"] == "1" and props["bastion:classes"] == "2"

    # Every installed distribution is listed with its purl, with the dependency graph.
    installed = from_environment()
    purls = {c["purl"] for c in document["components"] if c["type"] == "library"}
    assert purls == {p.purl for p in installed.packages}
    graph = {d["ref"]: set(d.get("dependsOn", [])) for d in document["dependencies"]}
    sklearn = next(p for p in installed.packages if p.name == "scikit-learn")
    numpy = next(p for p in installed.packages if p.name == "numpy")
    assert numpy.purl in graph[sklearn.purl]
    assert "data:train.csv" in graph["model:model.joblib"]
    assert sklearn.purl not in graph["model:model.joblib"]  # required by bastion, not direct


def test_lock_graph_and_several_models(
    assets: dict[str, Path], tmp_path: Path, cdx16: Draft7Validator
) -> None:
    lock = tmp_path / "uv.lock"
    lock.write_text(
        'version = 1\n[[package]]\nname = "app"\nversion = "0.1.0"\n'
        'dependencies = [{ name = "Scikit_Learn" }]\n'
        '[[package]]\nname = "scikit-learn"\nversion = "1.5.0"\n'
        'dependencies = [{ name = "numpy" }]\n'
        '[[package]]\nname = "numpy"\nversion = "2.0.0"\n',
        encoding="utf-8",
    )
    second = tmp_path / "model.joblib"
    second.write_bytes(assets["model"].read_bytes())
    out = tmp_path / "bom.cdx.json"
    result = runner.invoke(
        app, ["bom", "-m", str(assets["model"]), "-m", str(second), "--lock", str(lock),
              "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text("utf-8"))
    assert_valid(cdx16, document)
    graph = {d["ref"]: d.get("dependsOn", []) for d in document["dependencies"]}
    assert graph["pkg:pypi/app@0.1.0"] == ["pkg:pypi/scikit-learn@1.5.0"]
    assert graph["pkg:pypi/scikit-learn@1.5.0"] == ["pkg:pypi/numpy@2.0.0"]
    # Same file name twice: distinct references; only the root package is direct.
    assert graph["model:model.joblib"] == graph["model:model.joblib#2"] == ["pkg:pypi/app@0.1.0"]


def test_validator_rejects_a_malformed_model_card(assets: dict[str, Path]) -> None:
    text = build_bom([inspect_model(assets["model"])], packages=PackageSet("test", ()))
    assert validation_error(text) is None
    document = json.loads(text)
    document["components"][0]["modelCard"]["modelParameters"] = {"approach": {"type": "magic"}}
    problem = validation_error(json.dumps(document))
    assert problem is not None and "magic" in problem


def test_unpinned_requirement_gives_unversioned_purl(assets: dict[str, Path],
                                                      cdx16: Draft7Validator) -> None:
    packages = PackageSet("r.txt", (Package("numpy", None), Package("torch", "2.3.0")))
    text = build_bom(
        [inspect_model(assets["model"])], [inspect_data(assets["train"])], packages,
        [load_result(assets["results"])], CardInput(),
    )
    document = json.loads(text)
    assert_valid(cdx16, document)
    assert {c.get("purl") for c in document["components"] if c["type"] == "library"} == {
        "pkg:pypi/numpy", "pkg:pypi/torch@2.3.0"}


def test_bom_is_recorded_in_the_ledger(assets: dict[str, Path], tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==2.0.0\n", encoding="utf-8")
    out = tmp_path / "bom.json"
    result = runner.invoke(app, ["bom", "-m", str(assets["model"]), "-r", str(requirements),
                                 "-o", str(out), "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    with Ledger.open(ledger) as opened:
        (entry,) = opened.find("document")
    event = entry.event
    assert event["subjects"] == [{"name": "bom.json", "digest": "sha256:" + sha256_hex(out)}]
    assert event["parents"] == ["sha256:" + sha256_hex(assets["model"])]
    assert event["details"] == {"document": "cyclonedx-1.6", "packages": 1}


def test_bad_input_is_one_line_and_exit_2(assets: dict[str, Path], tmp_path: Path) -> None:
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("name: [unclosed\n", encoding="utf-8")
    typo_yaml = tmp_path / "typo.yaml"
    typo_yaml.write_text("intended_use:\n  primary_usez: [x]\n", encoding="utf-8")
    bad_req = tmp_path / "requirements.txt"
    bad_req.write_text("numpy==2.0\nthis is not a requirement\n", encoding="utf-8")
    not_report = tmp_path / "r.json"
    not_report.write_text('{"hello": 1}', encoding="utf-8")
    model = str(assets["model"])
    cases = {
        "no such model file": ["-m", str(tmp_path / "missing.pt")],
        "malformed YAML at line 2": ["-m", model, "--user", str(bad_yaml)],
        "unknown key 'intended_use.primary_usez'": ["-m", model, "--user", str(typo_yaml)],
        "requirements.txt:2: not a valid requirement": ["-m", model, "-r", str(bad_req)],
        "either --requirements or --lock": ["-m", model, "-r", str(bad_req), "--lock", "x"],
        "not a Bastion JSON report": ["-m", model, "--card-data", str(not_report)],
        "no label column 'nope'": ["-m", model, "-d", str(assets["train"]), "--label", "nope"],
    }
    for message, args in cases.items():
        out = tmp_path / "bom.json"
        result = runner.invoke(app, ["bom", *args, "-o", str(out)])
        assert result.exit_code == 2, (message, result.output)
        assert message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
