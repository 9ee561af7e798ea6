"""`bastion deps` offline against a small OSV-format fixture (tests/supplychain/deps/osv).

Online mode runs pip-audit, which needs PyPI or OSV.dev. The tests check that it is the mode
chosen, its exact command line, the parsing of pip-audit's JSON report, and, running the
real pip-audit with its HTTP(S) proxy pointed at a closed loopback port (so nothing leaves
the machine), that `bastion deps` calls it and turns its failure into one line, exit 2. A
successful online audit is not tested."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.errors import InputError, UsageError
from bastion.findings import Severity
from bastion.govern.ledger import Ledger
from bastion.supplychain.deps import (
    _spans,
    audit_offline,
    choose_source,
    load_osv_db,
    parse_pip_audit,
    pip_audit_command,
    rate,
)
from bastion.supplychain.pydeps import Package, PackageSet

OSV = Path(__file__).parent / "osv"
runner = CliRunner()


@pytest.fixture(scope="module")
def db():
    return load_osv_db(OSV)


def hits(db, name: str, version: str) -> dict[str, str | None]:
    found, _ = audit_offline(PackageSet("t", (Package(name, version),)), db)
    return {v.advisory: v.fixed_in for v in found}


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.1", {"PYSEC-TEST-0001": "1.4.0"}),
        ("1.3.9", {"PYSEC-TEST-0001": "1.4.0", "PYSEC-TEST-0005": "1.5.0"}),
        ("1.4.0rc1", {"PYSEC-TEST-0001": "1.4.0", "PYSEC-TEST-0005": "1.5.0"}),
        ("1.4.0", {"PYSEC-TEST-0005": "1.5.0"}),
        ("1.5.0", {}),
        ("1.9", {}),
        ("2.0", {"GHSA-test-0002": None}),
        ("2.1.3", {"GHSA-test-0002": None}),  # last_affected is inclusive
        ("2.1.4", {}),
        ("3.0.1", {"GHSA-test-0002": "3.0.2"}),
        ("3.0.2", {}),
    ],
)
def test_ecosystem_ranges(db, version: str, expected: dict[str, str | None]) -> None:
    # The withdrawn advisory, the npm entry and the GIT range never match.
    assert hits(db, "demo-lib", version) == expected


def interval_oracle(events: list[tuple[str, int | None]], v: int) -> bool:
    """Affected as intervals rather than a walk: some `introduced` I <= v with no `fixed` F
    in [I, v] and no `last_affected` L in [I, v) (None is the "0" start)."""
    for kind, start in events:
        if kind != "introduced" or (start is not None and start > v):
            continue
        low = -1 if start is None else start
        blocked = any(
            (k == "fixed" and b is not None and low <= b <= v)
            or (k == "last_affected" and b is not None and low <= b < v)
            for k, b in events
        )
        if not blocked:
            return True
    return False


EVENT = st.tuples(
    st.sampled_from(["introduced", "fixed", "last_affected"]), st.integers(0, 9)
).map(lambda e: (e[0], e[1]))


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    events=st.lists(EVENT, min_size=1, max_size=6).filter(
        lambda es: len({b for _, b in es}) == len(es)  # one event per version
    ),
    from_start=st.booleans(),
    v=st.integers(0, 10),
)
def test_range_walk_matches_interval_semantics(events, from_start, v) -> None:
    if from_start:
        events = [*events, ("introduced", None)]  # in any order: the loader sorts them
    osv_events = [{k: "0" if b is None else f"1.{b}"} for k, b in events]
    (span,) = _spans("test", [{"type": "ECOSYSTEM", "events": osv_events}])
    assert span.contains(Version(f"1.{v}")) == interval_oracle(events, v)


def test_explicit_versions_and_names(db) -> None:
    assert hits(db, "otherpkg", "0.9.2") == {"PYSEC-TEST-0003": None}
    assert hits(db, "otherpkg", "0.9.3") == {}
    assert db.advisories == 4  # withdrawn one skipped
    assert "demo-lib" in db.by_package  # "Demo_Lib" normalised


def test_severity_from_cvss_then_database() -> None:
    v31 = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # NVD base score 9.8
    assert rate([{"type": "CVSS_V3", "score": v31}], None).severity == Severity.CRITICAL
    low_v4 = "CVSS:4.0/AV:L/AC:L/AT:N/PR:L/UI:N/VC:L/VI:N/VA:N/SC:N/SI:N/SA:N"
    both = [{"type": "CVSS_V3", "score": v31}, {"type": "CVSS_V4", "score": low_v4}]
    assert rate(both, None).basis.startswith("CVSS_V4")  # the newer standard wins
    assert rate([{"type": "CVSS_V3", "score": "garbage"}], {"severity": "LOW"}).severity == (
        Severity.LOW
    )
    assert rate([], None).basis == "not scored"


def test_cli_offline_report(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("demo-lib==1.3.9\notherpkg==0.9.1\nsafe-lib==1.0\nloose>=1\n")
    out = tmp_path / "deps.json"
    result = runner.invoke(app, ["deps", "-r", str(requirements), "--osv-db", str(OSV),
                                 "--offline", "--format", "json", "--out", str(out)])
    assert result.exit_code == 1, result.output  # critical >= default --fail-on high
    report = json.loads(out.read_text())
    by_id = {(f["rule_id"], f["evidence"].get("advisory")): f for f in report["findings"]}
    assert set(by_id) == {("BST-DEP-001", "PYSEC-TEST-0001"), ("BST-DEP-001", "PYSEC-TEST-0005"),
                          ("BST-DEP-001", "PYSEC-TEST-0003"), ("BST-DEP-002", None)}
    rce = by_id[("BST-DEP-001", "PYSEC-TEST-0001")]
    assert rce["severity"] == "critical" and rce["references"] == ["ML06", "AML.T0010"]
    assert rce["location"] == {"path": str(requirements), "member": "demo-lib==1.3.9",
                               "offset": None}
    # The pip command upgrades past both advisories for demo-lib.
    assert "fixed in demo-lib 1.4.0" in rce["remediation"]
    assert "`pip install --upgrade 'demo-lib>=1.5.0'`" in rce["remediation"]
    assert f"bastion deps --requirements {requirements} --osv-db {OSV}" in rce["remediation"]
    assert by_id[("BST-DEP-001", "PYSEC-TEST-0005")]["severity"] == "medium"
    no_fix = by_id[("BST-DEP-001", "PYSEC-TEST-0003")]
    assert no_fix["severity"] == "high" and "No fixed release" in no_fix["remediation"]
    assert by_id[("BST-DEP-002", None)]["severity"] == "low"
    assert report["metrics"] == {"source": "osv-db", "vulnerabilities": 3,
                                 "vulnerable_packages": 2, "unpinned": 1,
                                 "packages_audited": 3}

    sarif = runner.invoke(app, ["deps", "-r", str(requirements), "--osv-db", str(OSV),
                                "--format", "sarif", "--fail-on", "critical"])
    assert sarif.exit_code == 1
    assert {r["ruleId"] for r in json.loads(sarif.stdout)["runs"][0]["results"]} == {
        "BST-DEP-001", "BST-DEP-002"}


def test_cli_clean_and_ledger(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("demo-lib==1.5.0\n")
    ledger = tmp_path / "ledger.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    result = runner.invoke(app, ["deps", "-r", str(requirements), "--osv-db", str(OSV),
                                 "--ledger", str(ledger)])
    assert result.exit_code == 0, result.output
    with Ledger.open(ledger) as opened:
        (entry,) = opened.find("scan")
    assert entry.event["details"]["check"] == "deps"
    assert entry.event["subjects"][0]["name"] == str(requirements)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable OSV advisory"),
        ('{"summary": "x"}', "not an OSV advisory (no 'id')"),
        ('{"id": "X-1", "affected": [{"package": {"ecosystem": "PyPI"}}]}', "no package name"),
        ('{"id": "X-1", "affected": [{"package": {"ecosystem": "PyPI", "name": "a"}, '
         '"ranges": [{"type": "ECOSYSTEM", "events": [{"broken": "1"}]}]}]}', "unknown event"),
    ],
)
def test_malformed_osv_file_exits_2(tmp_path: Path, content: str, message: str) -> None:
    folder = tmp_path / "osv"
    folder.mkdir()
    (folder / "bad.json").write_text(content)
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("a==1\n")
    result = runner.invoke(app, ["deps", "-r", str(requirements), "--osv-db", str(folder)])
    assert result.exit_code == 2
    assert message in result.output and "bad.json" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["deps", "--offline"])
    assert result.exit_code == 2 and "--offline needs --osv-db" in result.output
    bad = tmp_path / "requirements.txt"
    bad.write_text("demo-lib=1.0\n")
    result = runner.invoke(app, ["deps", "-r", str(bad), "--osv-db", str(OSV)])
    assert result.exit_code == 2 and "requirements.txt:1: not a valid requirement" in (
        result.output)
    result = runner.invoke(app, ["deps", "--osv-db", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no such OSV folder" in result.output
    with pytest.raises(InputError, match="no OSV advisories"):
        load_osv_db(tmp_path)


def test_online_mode_is_pip_audit_with_the_right_arguments() -> None:
    assert choose_source(offline=False, osv_db=None) == "pip-audit"
    assert choose_source(offline=False, osv_db="db") == "osv"
    with pytest.raises(UsageError):
        choose_source(offline=True, osv_db=None)
    assert pip_audit_command("req.txt") == [
        sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
        "--requirement", "req.txt"]
    assert "--requirement" not in pip_audit_command(None)  # audits this environment


def test_parse_pip_audit_json() -> None:
    text = json.dumps({
        "dependencies": [
            {"name": "Jinja2", "version": "3.1.2", "vulns": [
                {"id": "GHSA-h5c8-rqwp-cp95", "fix_versions": ["3.1.4", "3.1.3"],
                 "aliases": ["CVE-2024-22195"], "description": "xmlattr injection"}]},
            {"name": "numpy", "version": "2.0.0", "vulns": []},
            {"name": "local-pkg", "skip_reason": "not on PyPI"},
        ],
        "fixes": [],
    })
    (vuln,) = parse_pip_audit(text)
    assert (vuln.package, vuln.version, vuln.fixed_in) == ("jinja2", "3.1.2", "3.1.3")
    assert vuln.rating.basis == "not scored"
    with pytest.raises(InputError):
        parse_pip_audit("Traceback ...")


def test_online_mode_runs_pip_audit_and_reports_its_failure(monkeypatch) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, closed)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    result = runner.invoke(app, ["deps"])
    assert result.exit_code == 2, result.output
    assert "pip-audit failed" in result.output and "pypi.org" in result.output
    assert "use --osv-db FOLDER --offline" in result.output

