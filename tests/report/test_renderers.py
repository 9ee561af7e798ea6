"""Renderers against their schemas: Bastion's JSON report and official SARIF 2.1.0."""

from __future__ import annotations

import json
import pickle
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from rich.console import Console

from bastion.cli.scan import scan_report
from bastion.findings import Severity
from bastion.report import render
from bastion.report.table import print_table
from bastion.supplychain.scan import scan

SARIF_SCHEMA = json.loads((Path(__file__).parent / "sarif-schema-2.1.0.json").read_text())
REPORT_SCHEMA = json.loads(
    resources.files("bastion.report").joinpath("schemas/report-v1.json").read_text()
)


def _system_call_pickle(command: str) -> bytes:
    """Protocol 2 pickle calling os.system(command), assembled from opcodes."""
    cmd = command.encode()
    return (
        b"\x80\x02cos\nsystem\nq\x00X" + len(cmd).to_bytes(4, "little") + cmd + b"\x85R."
    )


@pytest.fixture
def mixed_report(tmp_path: Path, marker: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "evil.pkl").write_bytes(_system_call_pickle(f"touch {marker}"))
    (tmp_path / "models" / "clean.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    (tmp_path / "models" / "notes.txt").write_text("hello")
    return scan_report(scan(tmp_path / "models"), "scan models")


def test_json_report_matches_schema(mixed_report) -> None:
    document = json.loads(render(mixed_report, "json"))
    jsonschema.validate(document, REPORT_SCHEMA)
    assert document["summary"]["by_severity"]["critical"] == 1
    assert document["findings"][0]["severity"] == "critical"  # worst first
    assert document["findings"][0]["evidence"]["global"] == "os.system"
    assert len(document["artifacts"]) == 3


def test_sarif_validates_against_official_schema(mixed_report) -> None:
    document = json.loads(render(mixed_report, "sarif"))
    # The official schema has one pattern Python's re rejects ('^(?i)...' on
    # toolComponent.language, unused here), so validate without re-checking the schema.
    jsonschema.Draft202012Validator(SARIF_SCHEMA).validate(document)
    run = document["runs"][0]
    rules = {r["id"]: r for r in run["tool"]["driver"]["rules"]}
    critical = next(r for r in run["results"] if r["ruleId"] == "BST-SCAN-PKL-001")
    assert rules["BST-SCAN-PKL-001"]["properties"]["security-severity"] == "9.5"
    assert "ML06" in rules["BST-SCAN-PKL-001"]["properties"]["tags"]
    assert rules["BST-SCAN-PKL-001"]["help"]["markdown"]
    assert run["tool"]["driver"]["rules"][critical["ruleIndex"]]["id"] == critical["ruleId"]
    location = critical["locations"][0]["physicalLocation"]["artifactLocation"]
    assert location == {"uri": "models/evil.pkl", "uriBaseId": "SRCROOT"}
    assert critical["level"] == "error"


def test_sarif_fingerprints_are_stable_across_runs(mixed_report, tmp_path: Path) -> None:
    again = scan_report(scan(tmp_path / "models"), "scan models")
    def fingerprints(report) -> list[dict[str, str]]:
        results = json.loads(render(report, "sarif"))["runs"][0]["results"]
        return [r["partialFingerprints"] for r in results]

    first, second = fingerprints(mixed_report), fingerprints(again)
    assert first == second
    assert len({fp["bastionFinding/v1"] for fp in first}) == len(first)


def test_table_lists_findings_and_remedies(mixed_report) -> None:
    console = Console(record=True, width=160)
    print_table(mixed_report, console, fail_on=Severity.HIGH)
    text = console.export_text()
    assert "BST-SCAN-PKL-001" in text and "os.system" in text
    assert "How to fix" in text
    assert "1 finding(s) at or above high in 3 files" in text


def test_unknown_format_is_refused(mixed_report) -> None:
    with pytest.raises(ValueError, match="unknown report format"):
        render(mixed_report, "xml")
