"""`bastion audit` end to end on the demo project: each planted problem found by name,
nothing else fails the gate, the gate passes once the fixes are applied; reports validate."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

import bastion.audit as audit_module
from bastion.audit import CHECK_FAILED, REQUIRED_NOT_RUN, run_audit
from bastion.audit_checks import Check, CheckContext, CheckResult, registry
from bastion.cli.main import app
from bastion.config import load_config, parse_config
from bastion.demo.run import PLANTED, build_example
from bastion.findings import Severity, Threat
from bastion.govern.events import file_digest
from bastion.govern.ledger import Ledger

SARIF_SCHEMA = json.loads((Path(__file__).parents[1] / "report" / "sarif-schema-2.1.0.json")
                          .read_text())
REPORT_SCHEMA = json.loads(
    resources.files("bastion.report").joinpath("schemas/report-v1.json").read_text()
)


def audit_cli(*args: str):
    return CliRunner().invoke(app, ["audit", *args])


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory):
    """The demo project, audited once through the CLI."""
    root = tmp_path_factory.mktemp("audit") / "demo"
    example = build_example(root, torch_checkpoint=False)
    out = root / "reports"
    result = audit_cli("--config", str(example.config), "--out", str(out))
    assert not example.marker.exists()
    return example, result, out


def _blocking(document: dict, root: Path) -> set[tuple[str, str, str | None]]:
    return {
        (f["rule_id"], Path(f["location"]["path"]).relative_to(root).as_posix(),
         f["location"]["member"])
        for f in document["findings"] if f["severity"] in ("high", "critical")
    }


def test_audit_finds_each_planted_problem_and_nothing_else(audited) -> None:
    example, result, out = audited
    assert result.exit_code == 1, result.output
    document = json.loads((out / "audit.json").read_text())
    root = example.root
    blocking = _blocking(document, root)
    malicious = {path for rule, path, _ in blocking if path.startswith("downloads/")}
    assert {Path(p).parts[1] for p in malicious} == set(PLANTED)
    assert all(rule.startswith("BST-SCAN-") for rule, path, _ in blocking
               if path.startswith("downloads/"))
    rest = {b for b in blocking if not b[1].startswith("downloads/")}
    assert rest == {
        ("BST-AUD-SIG-001", "models/digits.joblib", None),  # the unsigned model
        ("BST-AUD-EXT-001", "models/digits.joblib", None),  # copyable by anyone in a day
        ("BST-AUD-SRV-001", "bastion.toml", "serving.host"),  # 0.0.0.0 without TLS
        ("BST-AUD-SRV-002", "bastion.toml", "serving.require_api_keys"),  # no API keys
        ("BST-DATA-011", "data/train.csv", None),  # the poisoned slice: a backdoor cluster
    }
    backdoor = next(f for f in document["findings"] if f["rule_id"] == "BST-DATA-011")
    assert backdoor["evidence"]["classes"] == ["0"]  # the demo's target class
    assert set(backdoor["evidence"]["first_rows"]) <= set(example.poisoned_rows)
    medium = {(f["rule_id"], f["location"]["member"]) for f in document["findings"]
              if f["severity"] in ("medium", "low")
              and f["location"]["path"] == str(example.config)}
    assert medium == {
        ("BST-AUD-SRV-003", "serving.rate_limit_per_key"),
        ("BST-AUD-SRV-004", "serving.output"),
        ("BST-AUD-SRV-005", "serving.cors_origins"),
        ("BST-AUD-SRV-008", "serving.daily_query_budget"),
    }
    benign = {str(p) for p in example.benign}
    assert not [f for f in document["findings"]
                if f["location"]["path"] in benign and f["severity"] in ("high", "critical")
                and f["rule_id"].startswith("BST-SCAN-")]


def test_every_finding_explains_itself(audited) -> None:
    _, _, out = audited
    document = json.loads((out / "audit.json").read_text())
    for finding in document["findings"]:
        assert "`bastion " in finding["remediation"], finding
        refs = finding["references"]
        assert any(r.startswith("ML") for r in refs) and any(r.startswith("AML.") for r in refs)
    unsigned = next(f for f in document["findings"] if f["rule_id"] == "BST-AUD-SIG-001")
    assert "bastion keys generate --out signing-key.pem" in unsigned["remediation"]
    assert "bastion sign models/digits.joblib --key signing-key.pem" in unsigned["remediation"]


def test_json_report_and_scores(audited) -> None:
    example, _, out = audited
    document = json.loads((out / "audit.json").read_text())
    jsonschema.validate(document, REPORT_SCHEMA)
    metrics = document["metrics"]
    assert metrics["gate"] == {"passed": False, "fail_on": "high", "thresholds": {},
                               "blocking": 11}
    scores = metrics["scores"]
    assert set(scores) == {t.value for t in Threat}
    assert scores["supply-chain"]["score"] == 0 and scores["supply-chain"]["grade"] == "F"
    assert scores["documentation"] == {"score": 100, "grade": "A", "checks": ["documentation"]}
    assert scores["adversarial-examples"] == {"score": 85, "grade": "B", "checks": ["evasion"]}
    # Offline RMIA tells members from test records only at noise level (a low finding), and
    # the digits hold no personal data; nobody declared a sensitive column or MIFace.
    assert scores["privacy"] == {"score": 96, "grade": "A", "checks": ["membership", "pii"]}
    assert scores["model-inversion"]["score"] is None
    # The permissive serving config (high, medium, low findings) and a copy one client makes
    # in a day (high).
    assert scores["model-stealing"]["checks"] == ["extraction", "serving"]
    assert scores["model-stealing"]["grade"] in ("D", "F")
    # The backdoor cluster (high), a few label issues (medium) and outliers (low) in the digits.
    # data_diff found nothing: the demo's ledger is new, so this audit is the data's baseline.
    assert scores["data-poisoning"] == {"score": 46, "grade": "D",
                                        "checks": ["data_diff", "poisoning"]}
    poisoning = metrics["checks"]["poisoning"]["metrics"]
    assert poisoning["flagged_backdoor"] == len(example.poisoned_rows)
    assert poisoning["model"] == {"used": True, "as": "estimator"}
    rows = out / "checks" / "poisoning" / "poisoning-rows.csv"
    assert {"path": str(rows), "kind": "suspicious-rows",
            "rows": poisoning["suspicious"]} in document["artifacts"]
    assert {n: c["status"] for n, c in metrics["checks"].items()} == {
        "bom": "ran", "data_diff": "ran",
        "deps": "not applicable",  # no OSV folder declared, and never online
        "documentation": "ran", "evasion": "ran", "extraction": "ran",
        "inversion": "not applicable",
        "membership": "ran", "pii": "ran", "poisoning": "ran", "scan": "ran", "serving": "ran",
        "signature": "ran"}
    membership = metrics["checks"]["membership"]["metrics"]
    assert (membership["members"], membership["nonmembers"], membership["references"]) == (
        1437, 360, 4)
    assert membership["attacks"][0]["auc"] < 0.6
    bom = metrics["checks"]["bom"]["metrics"]["bom"]
    assert bom == str(out / "checks" / "bom" / "bom.cdx.json")
    assert {"path": bom, "kind": "ml-bom", "format": "CycloneDX 1.6 JSON",
            "digest": file_digest(bom)} in document["artifacts"]


def test_sarif_from_the_audit_validates(audited) -> None:
    _, _, out = audited
    document = json.loads((out / "audit.sarif").read_text())
    jsonschema.Draft202012Validator(SARIF_SCHEMA).validate(document)
    run = document["runs"][0]
    rules = {r["id"] for r in run["tool"]["driver"]["rules"]}
    assert {"BST-AUD-SIG-001", "BST-AUD-SRV-001", "BST-SCAN-PKL-001"} <= rules
    serving = next(r for r in run["results"] if r["ruleId"] == "BST-AUD-SRV-001")
    assert serving["locations"][0]["logicalLocations"][0]["fullyQualifiedName"] == "serving.host"


def test_markdown_is_a_pull_request_comment(audited) -> None:
    _, _, out = audited
    text = (out / "audit.md").read_text()
    assert text.startswith("## Bastion audit: digits-demo\n")
    assert "❌ **gate failed**: 11 finding(s) at or above high" in text
    assert "| supply-chain | 0 | F |" in text
    assert "| data-poisoning | 46 | D |" in text
    assert "`BST-AUD-SIG-001` | `models/digits.joblib`" in text
    assert "<details><summary>" in text and len(text) < 60_000


def test_the_ledger_records_what_was_audited(audited) -> None:
    example, _, out = audited
    with Ledger.open(example.root / "ledger" / "audit.ledger") as ledger:
        entry = ledger.entry(ledger.size - 1)
    event = entry.event
    assert event["kind"] == "assess"
    digests = {s["name"]: s["digest"] for s in event["subjects"]}
    model = example.root / "models" / "digits.joblib"
    assert digests[str(model)] == file_digest(model)
    assert str(example.config) in digests
    details = event["details"]
    assert details["gate"] == "fail" and details["findings"]["critical"] >= 6
    assert details["reports"]["json"]["digest"] == file_digest(out / "audit.json")
    # The data_diff check's roots, which the next audit compares the data against.
    metrics = json.loads((out / "audit.json").read_text())["metrics"]
    data = metrics["checks"]["data_diff"]["metrics"]["datasets"]
    assert {role: d["root"] for role, d in details["datasets"].items()} == {
        "train": data["train"]["root"], "test": data["test"]["root"]}
    assert data["train"]["status"] == "first audit of this dataset: baseline recorded"


@pytest.fixture
def small(tmp_path: Path):
    """A project with one real model file and nothing else."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), tmp_path / "m.joblib")
    (tmp_path / "MODEL_CARD.md").write_text(
        "# Card\n## Intended use\n## Training data\n## Evaluation\n## Limitations\n"
        "## Ethical considerations\n")
    return tmp_path


def _write_config(root: Path, text: str) -> Path:
    path = root / "bastion.toml"
    path.write_text('[model]\npath = "m.joblib"\n' + text)
    return path


def test_only_skip_and_required_checks(small: Path) -> None:
    config = _write_config(small, '[policy]\nrequired = ["scan", "signature", "fuzzing"]\n')
    result = audit_cli("--config", str(config), "--out", str(small / "o"), "--only",
                       "scan,documentation", "--format", "json")
    assert result.exit_code == 1, result.output
    document = json.loads((small / "o" / "audit.json").read_text())
    required = {f["evidence"]["check"]: f["evidence"]["reason"] for f in document["findings"]
                if f["rule_id"] == REQUIRED_NOT_RUN.rule_id}
    assert required == {"signature": "skipped", "fuzzing": "no such check is installed"}
    statuses = {n: c["status"] for n, c in document["metrics"]["checks"].items()}
    assert statuses == {"bom": "skipped", "data_diff": "skipped", "deps": "skipped",
                        "documentation": "ran",
                        "evasion": "skipped", "extraction": "skipped", "inversion": "skipped",
                        "membership": "skipped",
                        "pii": "skipped", "poisoning": "skipped", "scan": "ran",
                        "serving": "skipped",
                        "signature": "skipped"}
    skipped = audit_cli("--config", str(config), "--out", str(small / "s"), "--skip", "signature",
                        "--skip", "scan", "--format", "md")
    assert "| `scan` | skipped |" in (small / "s" / "audit.md").read_text()
    assert skipped.exit_code == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "evasoin"], "unknown check 'evasoin' (available: bom, data_diff, deps, "
         "documentation, evasion, extraction, inversion, membership, pii, poisoning, scan, "
         "serving, signature)"),
        (["--format", "pdf"], "unknown format pdf"),
        (["--fail-on", "severe"], "unknown severity 'severe'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(small: Path, args: list[str], message: str) -> None:
    config = _write_config(small, "")
    result = audit_cli("--config", str(config), "--out", str(small / "o"), *args)
    assert result.exit_code == 2
    assert message in result.output
    assert not (small / "o").exists()


def test_out_must_be_a_folder(small: Path) -> None:
    config = _write_config(small, "")
    (small / "taken").write_text("x")
    result = audit_cli("--config", str(config), "--out", str(small / "taken"))
    assert result.exit_code == 2 and "exists and is not a folder" in result.output


def test_missing_ledger_is_refused_before_any_check(small: Path) -> None:
    config = _write_config(small, '[ledger]\npath = "nope.ledger"\n')
    result = audit_cli("--config", str(config), "--out", str(small / "o"))
    assert result.exit_code == 2
    assert "no ledger at" in result.output and "bastion ledger init" in result.output
    assert not (small / "o").exists()


def test_per_check_thresholds_and_fail_on_override(small: Path) -> None:
    serving = '[serving]\nhost = "0.0.0.0"\n[signing]\nsignature = "m.joblib.sig"\n'
    config = _write_config(small, serving + '[policy]\nthresholds = { serving = "critical", '
                           'signature = "critical" }\n')
    result = audit_cli("--config", str(config), "--out", str(small / "o"), "--format", "json")
    assert result.exit_code == 0, result.output  # the unsigned model and open bind are high
    strict = audit_cli("--config", str(config), "--out", str(small / "o"), "--fail-on", "low")
    assert strict.exit_code == 1  # scan's low trusted-class findings now fail the gate


def _boom(config, ctx: CheckContext) -> CheckResult:
    raise ZeroDivisionError("division by zero")


def test_a_failing_check_is_a_finding_not_a_pass(small: Path, monkeypatch) -> None:
    broken = Check("broken", "Always fails", (Threat.PRIVACY,), lambda config: True, _boom)
    checks = {**registry(), "broken": broken}
    monkeypatch.setattr(audit_module, "registry", lambda: checks)
    config = load_config(_write_config(small, ""))
    result = run_audit(config, out=small / "o", jobs=1)
    outcome = result.outcome("broken")
    assert outcome.status == "error"
    assert outcome.error.startswith("ZeroDivisionError: division by zero (at test_audit.py:")
    failed = [f for f in result.findings if f.rule_id == CHECK_FAILED.rule_id]
    assert len(failed) == 1 and failed[0] in result.blocking
    assert result.scores[Threat.PRIVACY].score is None  # an error assesses nothing


def _dies(config, ctx: CheckContext) -> CheckResult:
    os._exit(3)  # what an out-of-memory kill looks like to the pool


def test_a_worker_that_dies_is_a_finding(small: Path, monkeypatch) -> None:
    dying = Check("dying", "Kills its worker", (Threat.PRIVACY,), lambda config: True, _dies)
    checks = {**registry(), "dying": dying}
    monkeypatch.setattr(audit_module, "registry", lambda: checks)
    # fork, so the worker sees this test's registry (a fresh forkserver worker would not)
    monkeypatch.setattr(audit_module, "START_METHOD", "fork")
    result = run_audit(load_config(_write_config(small, "")), out=small / "o", jobs=2)
    assert result.outcome("dying").status == "error"
    assert "worker process died" in result.outcome("dying").error
    assert {o.status for o in result.outcomes} <= {"ran", "error", "not applicable"}
    assert not result.passed


def test_signature_states(small: Path) -> None:
    from bastion.supplychain.sign import generate_key_pair, sign

    generate_key_pair(small / "k.pem")
    sign(small / "m.joblib", small / "k.pem")
    signed_no_key = run_audit(load_config(_write_config(small, "")), out=small / "o",
                              only=["signature"])
    assert [f.rule_id for f in signed_no_key.findings] == ["BST-AUD-SIG-002"]
    config = load_config(_write_config(small, '[signing]\npublic_key = "k.pub"\n'))
    assert run_audit(config, out=small / "o", only=["signature"]).findings == []
    with open(small / "m.joblib", "ab") as handle:
        handle.write(b"\0")
    tampered = run_audit(config, out=small / "o", only=["signature"]).findings
    assert [(f.rule_id, f.severity) for f in tampered] == [("BST-AUD-SIG-003", Severity.CRITICAL)]
    assert "file changed" in tampered[0].evidence["problems"][0]


def test_a_folder_signature_covers_the_model(small: Path) -> None:
    from bastion.supplychain.sign import generate_key_pair, sign

    generate_key_pair(small / "k.pem")
    release = small / "release"
    release.mkdir()
    (small / "m.joblib").rename(release / "m.joblib")
    (release / "config.json").write_text("{}")
    sign(release, small / "k.pem")  # writes release/model.sig over the whole folder
    path = small / "bastion.toml"
    path.write_text('[model]\npath = "release/m.joblib"\n[signing]\npublic_key = "k.pub"\n')
    assert run_audit(load_config(path), out=small / "o", only=["signature"]).findings == []
    (release / "config.json").write_text('{"changed": true}')
    changed = run_audit(load_config(path), out=small / "o", only=["signature"]).findings
    assert [f.rule_id for f in changed] == ["BST-AUD-SIG-003"]
    assert "config.json" in changed[0].evidence["problems"][0]


def test_serving_review_reads_each_setting(tmp_path: Path) -> None:
    from bastion.audit_checks.serving import review

    def rules(serving: dict) -> list[str]:
        return [f.rule_id for f in review(parse_config({"serving": serving}, tmp_path))]

    assert rules({}) == []
    assert rules({"host": "::1"}) == [] and rules({"host": "localhost"}) == []
    assert rules({"host": "10.0.0.5", "tls_cert": "c", "tls_key": "k"}) == []
    assert rules({"host": "models.internal"}) == ["BST-AUD-SRV-001"]
    assert rules({"rate_limit_per_address": 0}) == ["BST-AUD-SRV-003"]
    assert rules({"max_body_bytes": 0, "monitor": "off"}) == ["BST-AUD-SRV-006",
                                                              "BST-AUD-SRV-007"]
    assert rules({"cors_origins": ["https://a.example"]}) == []
    within = parse_config({"serving": {"daily_query_budget": 100},
                           "threat_model": {"extraction": {"query_budget": 500}}}, tmp_path)
    assert review(within) == []


def test_documentation_presence_and_sections(small: Path) -> None:
    (small / "MODEL_CARD.md").write_text("# Card\n## Intended use\nText\n")
    (small / "train.csv").write_text("a,label\n1,0\n")
    config = load_config(_write_config(small, '[data.train]\npath = "train.csv"\n'))
    findings = run_audit(config, out=small / "o", only=["documentation"]).findings
    by_rule = {f.rule_id: f for f in findings}
    assert set(by_rule) == {"BST-AUD-DOC-002", "BST-AUD-DOC-003"}
    assert by_rule["BST-AUD-DOC-002"].evidence["missing_sections"] == [
        "training data", "evaluation", "limitations", "ethical considerations"]
    assert by_rule["BST-AUD-DOC-003"].severity is Severity.MEDIUM
    assert ("`bastion datasheet --data train.csv --out DATASHEET.md`"
            in by_rule["BST-AUD-DOC-003"].remediation)


def test_a_card_drafted_by_bastion_card_has_the_sections(small: Path, monkeypatch) -> None:
    (small / "MODEL_CARD.md").unlink()
    monkeypatch.chdir(small)  # remediation commands are run from the project folder
    config = load_config(_write_config(small, ""))
    (missing,) = run_audit(config, out=small / "o", only=["documentation"]).findings
    command = "bastion card --model m.joblib --out MODEL_CARD.md"
    assert missing.rule_id == "BST-AUD-DOC-001" and f"`{command}`" in missing.remediation
    drafted = CliRunner().invoke(app, command.split()[1:])
    assert drafted.exit_code == 0, drafted.output
    assert run_audit(config, out=small / "o", only=["documentation"]).findings == []


def test_nothing_to_audit_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "bastion.toml").write_text('[project]\nname = "empty"\n')
    result = audit_cli("--config", str(tmp_path / "bastion.toml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "nothing to audit: no selected check applies" in result.output
    assert not (tmp_path / "o").exists()


def test_checks_wait_for_a_free_worker(small: Path) -> None:
    config = load_config(_write_config(small, "[serving]\n"))
    events: list[tuple[str, str]] = []
    run_audit(config, out=small / "o", jobs=2,
              progress=lambda name, status, seconds: events.append((name, status)))
    running = 0
    for _, status in events:
        running += {"running": 1, "ran": -1, "error": -1}.get(status, 0)
        assert running <= 2
    assert sorted(n for n, s in events if s == "ran") == ["bom", "documentation", "scan",
                                                          "serving", "signature"]
