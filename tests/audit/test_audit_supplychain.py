"""The audit's supply-chain checks: `bom` writes a schema-valid CycloneDX 1.6 ML-BOM as an
artifact and reports what it cannot pin; `deps` matches the declared packages against an
OSV folder (tests/supplychain/deps/osv); online (pip-audit) only when configured, tested
with its proxy at a closed loopback port so nothing leaves the machine. Both turn bad input
into a failed-check finding or a one-line configuration error. Also: every command a
check's or the demo's remediation names exists."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from bastion.audit import CHECK_FAILED, run_audit
from bastion.audit_checks.serving import NO_AUTH
from bastion.cli.main import app
from bastion.config import load_config
from bastion.errors import InputError
from bastion.findings import Severity
from bastion.govern.events import file_digest
from bastion.supplychain.bom import validation_error

OSV = Path(__file__).parents[1] / "supplychain" / "deps" / "osv"
SRC = Path(__file__).parents[2] / "src" / "bastion"
REQUIREMENTS = "demo-lib==1.3.9\notherpkg==0.9.1\nsafe-pkg==2.0\nloose-pkg>=1\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A real model file, training data, a requirements file and a copy of the OSV fixture."""
    import joblib
    from sklearn.linear_model import LogisticRegression

    joblib.dump(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), tmp_path / "m.joblib")
    (tmp_path / "train.csv").write_text("x,label\n0,0\n1,1\n2,1\n")
    (tmp_path / "requirements.txt").write_text(REQUIREMENTS)
    shutil.copytree(OSV, tmp_path / "osv")
    return tmp_path


def configure(root: Path, supply_chain: str) -> Path:
    path = root / "bastion.toml"
    path.write_text('[model]\npath = "m.joblib"\n[data.train]\npath = "train.csv"\n'
                    f'label = "label"\n[supply_chain]\n{supply_chain}')
    return path


def test_bom_check_writes_a_valid_ml_bom_as_an_artifact(project: Path) -> None:
    config = load_config(configure(project, 'requirements = "requirements.txt"\n'))
    result = run_audit(config, out=project / "out", only=["bom"], jobs=1)
    outcome = result.outcome("bom")
    assert outcome.status == "ran", outcome.error
    bom = project / "out" / "checks" / "bom" / "bom.cdx.json"
    text = bom.read_text()
    assert validation_error(text) is None
    assert outcome.result.artifacts == [{"path": str(bom), "kind": "ml-bom",
                                         "format": "CycloneDX 1.6 JSON",
                                         "digest": file_digest(bom)}]
    document = json.loads(text)
    assert document["specVersion"] == "1.6"
    by_type: dict[str, list[dict]] = {}
    for component in document["components"]:
        by_type.setdefault(component["type"], []).append(component)
    (model,) = by_type["machine-learning-model"]
    assert model["hashes"] == [{"alg": "SHA-256", "content": file_digest(project / "m.joblib")
                                .removeprefix("sha256:")}]
    assert "modelCard" in model
    (data,) = by_type["data"]
    assert data["name"] == "train.csv" and data["hashes"][0]["alg"] == "SHA-256"
    assert {(c["name"], c.get("version")) for c in by_type["library"]} == {
        ("demo-lib", "1.3.9"), ("otherpkg", "0.9.1"), ("safe-pkg", "2.0"), ("loose-pkg", None)}
    # The unpinned requirement is the one thing the BOM cannot pin.
    (finding,) = result.findings
    assert finding.rule_id == "BST-AUD-BOM-003" and finding.severity is Severity.LOW
    assert finding.evidence == {"packages": ["loose-pkg"]}
    assert finding.location.path == str(project / "requirements.txt")
    assert "`bastion audit --only bom`" in finding.remediation
    assert outcome.result.metrics["packages"] == 4


def test_bom_check_reports_what_it_cannot_describe(project: Path) -> None:
    (project / "weights.bin").write_bytes(b"\x13\x37 not any model format " * 8)
    (project / "shards").mkdir()
    (project / "shards" / "part-0.bin").write_bytes(b"\0" * 16)
    path = project / "bastion.toml"
    path.write_text('[model]\npath = ["weights.bin", "shards"]\n'
                    '[supply_chain]\nrequirements = "requirements.txt"\n')
    result = run_audit(load_config(path), out=project / "out", only=["bom"], jobs=1)
    found = {(f.rule_id, Path(f.location.path).name, f.severity) for f in result.findings}
    assert found == {
        ("BST-AUD-BOM-001", "weights.bin", Severity.MEDIUM),  # no recognised format
        ("BST-AUD-BOM-002", "shards", Severity.MEDIUM),  # a folder has no single digest
        ("BST-AUD-BOM-003", "requirements.txt", Severity.LOW),
    }
    document = json.loads((project / "out" / "checks" / "bom" / "bom.cdx.json").read_text())
    (model,) = [c for c in document["components"] if c["type"] == "machine-learning-model"]
    assert {"name": "bastion:format", "value": "unrecognised"} in model["properties"]


def test_bom_check_with_a_malformed_requirements_file_fails_as_a_finding(project: Path) -> None:
    (project / "requirements.txt").write_text("demo-lib==1.3.9\nnot a requirement!\n")
    config = load_config(configure(project, 'requirements = "requirements.txt"\n'))
    result = run_audit(config, out=project / "out", only=["bom"], jobs=1)
    assert result.outcome("bom").status == "error"
    (failed,) = result.findings
    assert failed.rule_id == CHECK_FAILED.rule_id and failed in result.blocking
    assert "requirements.txt:2: not a valid requirement" in failed.evidence["error"]
    assert not (project / "out" / "checks" / "bom" / "bom.cdx.json").exists()


def test_deps_check_matches_the_osv_folder_offline(project: Path) -> None:
    config = load_config(configure(project, 'requirements = "requirements.txt"\n'
                                            'osv_db = "osv"\n'))
    result = run_audit(config, out=project / "out", only=["deps"], jobs=1)
    outcome = result.outcome("deps")
    assert outcome.status == "ran", outcome.error
    found = {(f.rule_id, f.location.member, f.evidence.get("advisory"), f.severity)
             for f in result.findings}
    assert found == {
        ("BST-DEP-001", "demo-lib==1.3.9", "PYSEC-TEST-0001", Severity.CRITICAL),  # CVSS 9.8
        ("BST-DEP-001", "demo-lib==1.3.9", "PYSEC-TEST-0005", Severity.MEDIUM),  # CVSS v4
        ("BST-DEP-001", "otherpkg==0.9.1", "PYSEC-TEST-0003", Severity.HIGH),  # not scored
        ("BST-DEP-002", "loose-pkg", None, Severity.LOW),
    }
    critical = next(f for f in result.findings if f.severity is Severity.CRITICAL)
    assert "pip install --upgrade 'demo-lib>=1.5.0'" in critical.remediation
    assert ("`bastion deps --requirements requirements.txt --osv-db osv --offline`"
            in critical.remediation)
    assert outcome.result.metrics == {
        "source": "osv-db", "packages_from": str(project / "requirements.txt"),
        "advisories": 4, "packages_audited": 3, "vulnerabilities": 3,
        "vulnerable_packages": 2, "unpinned": 1,
    }
    assert not result.passed


def test_deps_check_reads_a_lock_file(project: Path) -> None:
    (project / "uv.lock").write_text('version = 1\n[[package]]\nname = "demo-lib"\n'
                                     'version = "2.1.0"\n')
    config = load_config(configure(project, 'lock = "uv.lock"\nosv_db = "osv"\n'))
    (finding,) = run_audit(config, out=project / "out", only=["deps"], jobs=1).findings
    assert finding.evidence["advisory"] == "GHSA-test-0002"
    assert finding.severity is Severity.MEDIUM  # the database's "moderate"
    assert "`bastion audit --only deps`" in finding.remediation  # `bastion deps` reads no locks


def test_deps_check_runs_only_when_a_source_is_declared(project: Path) -> None:
    quiet = load_config(configure(project, 'requirements = "requirements.txt"\n'))
    result = run_audit(quiet, out=project / "out", only=["deps", "bom"], jobs=1)
    assert result.outcome("deps").status == "not applicable"  # no OSV folder, not online
    from bastion.audit_checks.deps import CHECK

    assert CHECK.applies(load_config(configure(project, "online = true\n")))


def test_deps_check_with_a_malformed_osv_file_fails_as_a_finding(project: Path) -> None:
    (project / "osv" / "PyPI" / "PYSEC-BROKEN.json").write_text('{"id": "PYSEC-BROKEN", ')
    config = load_config(configure(project, 'requirements = "requirements.txt"\n'
                                            'osv_db = "osv"\n'))
    result = run_audit(config, out=project / "out", only=["deps"], jobs=1)
    assert result.outcome("deps").status == "error"
    (failed,) = result.findings
    assert failed.rule_id == CHECK_FAILED.rule_id and not result.passed
    assert "PYSEC-BROKEN.json: not a readable OSV advisory" in failed.evidence["error"]


@pytest.mark.parametrize(
    ("supply_chain", "message"),
    [
        ('osv_db = "missing-osv"\n', "supply_chain.osv_db: OSV folder"),
        ('requirements = "nope.txt"\n', "supply_chain.requirements: requirements file"),
        ('osv_db = "osv"\nonline = true\n', "are two vulnerability sources: give one"),
        ('lock = "uv.lock"\nonline = true\n', "use osv_db with a lock file"),
        ('requirements = "requirements.txt"\nlock = "uv.lock"\n', "give one"),
        ('osv = "osv"\n', "unknown key 'supply_chain.osv'"),
    ],
)
def test_supply_chain_config_errors_are_one_line(project: Path, supply_chain: str,
                                                 message: str) -> None:
    config = configure(project, supply_chain)
    with pytest.raises(InputError, match=re.escape(message)):
        load_config(config)
    result = CliRunner().invoke(app, ["audit", "--config", str(config), "--out",
                                      str(project / "out")])
    assert result.exit_code == 2 and message in result.output
    assert not (project / "out").exists()


def _command_paths(cli: typer.Typer) -> set[tuple[str, ...]]:
    group = typer.main.get_command(cli)
    context = click.Context(group)
    paths = set()
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        paths.add((name,))
        for sub in getattr(command, "commands", {}):
            paths.add((name, sub))
    return paths


def test_every_command_a_remediation_names_exists() -> None:
    known = _command_paths(app)
    groups = {path[0] for path in known if len(path) == 2}
    named = set()
    for source in [*(SRC / "audit_checks").glob("*.py"), *(SRC / "demo").glob("*.py")]:
        for first, second in re.findall(r"`bastion ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?",
                                        source.read_text()):
            named.add((first, second) if first in groups else (first,))
    assert ("api-keys", "create") in named and ("keys", "generate") in named
    assert named <= known, named - known
    assert "`bastion api-keys create --name CLIENT`" in NO_AUTH.remediation


def test_online_deps_check_runs_pip_audit_and_a_failure_is_a_finding(
        project: Path, monkeypatch) -> None:
    closed = "http://127.0.0.1:9"  # the discard port: the connection is refused locally
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, closed)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(configure(project, "online = true\n"))
    result = run_audit(config, out=project / "out", only=["deps"], jobs=1)
    assert result.outcome("deps").status == "error"
    (failed,) = result.findings
    assert failed.rule_id == CHECK_FAILED.rule_id and not result.passed
    assert "pip-audit failed" in failed.evidence["error"]
