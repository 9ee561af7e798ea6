"""Supply chain: a CycloneDX 1.6 ML-BOM of the project (`bastion bom`) written into the
audit's output folder: the model files, the training and test data and the Python packages,
validated against the official schema. What the BOM cannot describe precisely (a model in
no format Bastion recognises, a folder that has no single digest, packages without a
version) is reported, because a BOM entry that does not pin its subject proves nothing."""

from __future__ import annotations

from pathlib import Path

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.audit_checks._packages import package_file, packages
from bastion.config import AuditConfig
from bastion.findings import Finding, Location, Rule, Severity, Threat, register
from bastion.fsutil import atomic_write
from bastion.govern.events import file_digest
from bastion.supplychain.bom import DataFile, ModelFile, build_bom, inspect_data, inspect_model

BOM_FILE = "bom.cdx.json"
_RECHECK = "Re-check with `bastion audit --only bom`."
_REFS = ("ML06", "AML.T0010")


def _rule(rule_id: str, name: str, help_text: str, fix: str, severity: Severity) -> Rule:
    return register(Rule(rule_id, name, help_text, f"{fix} {_RECHECK}", Threat.SUPPLY_CHAIN,
                         severity, _REFS))


UNRECOGNISED = _rule(
    "BST-AUD-BOM-001", "bom-model-format-unrecognised",
    "The model file's content matches no format Bastion knows, so the ML-BOM lists it as "
    "'unrecognised': nobody reading the BOM can tell what loads it, and `bastion scan` has "
    "no format-specific checks to run on it.",
    "Save the model in a recognised format (safetensors, ONNX, a torch or joblib file), or "
    "check that the file is the model you meant and not a truncated or renamed one.",
    Severity.MEDIUM,
)
NO_DIGEST = _rule(
    "BST-AUD-BOM-002", "bom-component-without-digest",
    "The path is a folder, so the ML-BOM has no single SHA-256 for it: its content can "
    "change without the BOM showing it, and a reviewer cannot tell which version was "
    "audited.",
    "List the model's weight files in [model] path instead of their folder; pack a data "
    "folder into one file (.npz, Parquet) for [data] path, or pin it with "
    "`bastion sign FOLDER --key KEY.pem`.",
    Severity.MEDIUM,
)
UNVERSIONED = _rule(
    "BST-AUD-BOM-003", "bom-packages-without-version",
    "Some packages have no exact version in the requirements or lock file, so the ML-BOM "
    "lists them without one: which release the model runs with, and whether it has known "
    "vulnerabilities, depends on the day it is installed.",
    "Pin them with `==` (`pip freeze` or `pip-compile` writes pinned files), or declare a "
    "lock file in [supply_chain] lock.",
    Severity.LOW,
)


def _models(config: AuditConfig) -> tuple[list[ModelFile], list[Finding]]:
    described, findings = [], []
    for path in config.model_paths():
        if path.is_dir():
            findings.append(NO_DIGEST.finding(
                f"Model {path.name} is a folder; the ML-BOM cannot pin it with one digest",
                Location(str(path)), evidence={"kind": "model", "folder": str(path)},
            ))
            continue
        model = inspect_model(path)
        described.append(model)
        if not model.formats:
            findings.append(UNRECOGNISED.finding(
                f"Model {path.name} is in no recognised format",
                Location(str(path)),
                evidence={"size": model.size, "sha256": model.sha256},
            ))
    return described, findings


def _data(config: AuditConfig) -> tuple[list[DataFile], list[Finding]]:
    described, findings = [], []
    for name in ("train", "test"):
        dataset = getattr(config.data, name)
        if dataset is None:
            continue
        item = inspect_data(config.resolve(dataset.path), dataset.label)
        described.append(item)
        if not item.sha256:
            findings.append(NO_DIGEST.finding(
                f"The {name} data {item.path.name} is a folder; the ML-BOM lists it without "
                "a digest",
                Location(str(item.path), f"data.{name}"),
                evidence={"kind": "data", "folder": str(item.path)},
            ))
    return described, findings


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    models, findings = _models(config)
    data, data_findings = _data(config)
    findings += data_findings
    listed = packages(config)
    unversioned = sorted(p.name for p in listed.packages if p.version is None)
    if unversioned:
        source = package_file(config) or Path(listed.source)
        findings.append(UNVERSIONED.finding(
            f"{len(unversioned)} package(s) in {source.name} have no pinned version",
            Location(str(source)),
            evidence={"packages": unversioned},
        ))
    metrics: dict[str, object] = {
        "models": len(models), "datasets": len(data), "packages": len(listed.packages),
        "package_source": listed.source, "bom": None,
    }
    if not models:  # every model path was a folder: nothing a BOM can be about
        return CheckResult(findings=findings, metrics=metrics)
    bom = atomic_write(ctx.out / BOM_FILE, build_bom(models, data, listed))  # schema-validated
    digest = file_digest(bom)
    metrics.update(bom=str(bom), sha256=digest.removeprefix("sha256:"),
                   schema="CycloneDX 1.6 (validated)")
    artifact = {"path": str(bom), "kind": "ml-bom", "format": "CycloneDX 1.6 JSON",
                "digest": digest}
    return CheckResult(findings=findings, metrics=metrics, artifacts=[artifact])


def _applies(config: AuditConfig) -> bool:
    return bool(config.model_paths())


CHECK = Check(
    name="bom",
    title="ML-BOM (CycloneDX 1.6)",
    threats=(Threat.SUPPLY_CHAIN,),
    applies=_applies,
    run=_run,
)
