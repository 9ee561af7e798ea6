"""Supply chain: is each model file signed, and does its signature verify with the declared
key (`bastion sign` / `bastion verify`)?"""

from __future__ import annotations

import shlex
from pathlib import Path

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import AuditConfig
from bastion.errors import InputError
from bastion.findings import Finding, Location, Rule, Severity, Threat, register
from bastion.supplychain.sign import VerificationError, default_signature_path, verify_model

_REFS = ("ML06", "AML.T0010.003")

UNSIGNED = register(Rule(
    "BST-AUD-SIG-001",
    "model-unsigned",
    "The model file has no signature, so nobody can tell whether the file that is deployed "
    "is the file that was trained and reviewed: a swapped or tampered model goes unnoticed.",
    "Sign the model and declare the public key in bastion.toml ([signing] public_key); the "
    "finding names the exact `bastion keys generate` and `bastion sign` commands.",
    Threat.SUPPLY_CHAIN, Severity.HIGH, _REFS,
))
NO_KEY = register(Rule(
    "BST-AUD-SIG-002",
    "model-signature-not-verifiable",
    "The model has a signature, but bastion.toml names no public key to verify it with, so "
    "the signature proves nothing about who made the file.",
    "Declare the signer's public key in bastion.toml ([signing] public_key = \"key.pub\") and "
    "re-check with `bastion audit --only signature`.",
    Threat.SUPPLY_CHAIN, Severity.MEDIUM, _REFS,
))
BAD_SIGNATURE = register(Rule(
    "BST-AUD-SIG-003",
    "model-signature-invalid",
    "The model's signature does not verify: the file changed after signing, or it was signed "
    "with another key. This is what a tampered or swapped model looks like.",
    "Do not deploy the file. Find out what changed (the evidence names it), restore the "
    "signed file or re-sign a reviewed one with `bastion sign`, then "
    "`bastion verify MODEL --key KEY.pub`.",
    Threat.SUPPLY_CHAIN, Severity.CRITICAL, _REFS,
))


def _signature_for(config: AuditConfig, model: Path) -> tuple[Path, Path] | None:
    """What signs the model and what that signature covers: the declared signature, else
    FILE.sig beside the model, else a folder's model.sig at most three folders up (as safe
    loading looks). A folder's signature covers the whole folder, so the folder is what is
    verified."""
    if config.signing.signature:
        declared = config.resolve(config.signing.signature)
        if not declared.is_file():
            return None
        folder = declared.parent
        covers_folder = (declared.name == default_signature_path(folder).name
                         and model.is_relative_to(folder))
        return (folder if covers_folder else model), declared
    for scope in (model, *model.parents[:3]):
        candidate = default_signature_path(scope)
        if candidate.is_file():
            return scope, candidate
        if scope == config.root:
            break
    return None


def _shown(config: AuditConfig, path: Path) -> str:
    """A path as the user would type it from the project folder."""
    try:
        return shlex.quote(str(path.relative_to(config.root)))
    except ValueError:
        return shlex.quote(str(path))


def _unsigned(config: AuditConfig, model: Path) -> Finding:
    key = config.signing.public_key
    public = _shown(config, config.resolve(key)) if key else "signing-key.pub"
    private = public.removesuffix(".pub") + ".pem" if public.endswith(".pub") else "signing-key.pem"
    target = _shown(config, model)
    commands = (
        f"`bastion sign {target} --key {private}`"
        if key
        else f"`bastion keys generate --out {private}` then `bastion sign {target} --key "
        f"{private}`, and add `[signing] public_key = \"{public}\"` to bastion.toml"
    )
    return UNSIGNED.finding(
        f"Model {model.name} is not signed",
        Location(str(model)),
        evidence={"looked_for": str(default_signature_path(model))},
        remediation=f"Sign it: {commands}. Re-check with `bastion verify {target} --key "
        f"{public}` or `bastion audit --only signature`.",
    )


def _check_model(config: AuditConfig, model: Path) -> tuple[list[Finding], dict[str, object]]:
    found = _signature_for(config, model)
    if found is None:
        return [_unsigned(config, model)], {"signed": False}
    scope, signature = found
    if not config.signing.public_key:
        finding = NO_KEY.finding(
            f"Signature of {model.name} cannot be verified: no public key declared",
            Location(str(model)),
            evidence={"signature": str(signature)},
        )
        return [finding], {"signed": True, "verified": False}
    key = config.resolve(config.signing.public_key)
    try:
        result = verify_model(scope, key, signature)
    except VerificationError as exc:
        finding = BAD_SIGNATURE.finding(
            f"Signature of {model.name} does not verify",
            Location(str(model)),
            evidence={"signature": str(signature), "problems": [p.message for p in exc.problems]},
        )
        return [finding], {"signed": True, "verified": False}
    except InputError as exc:
        finding = BAD_SIGNATURE.finding(
            f"Signature of {model.name} cannot be read",
            Location(str(model)),
            evidence={"signature": str(signature), "problems": [exc.message]},
        )
        return [finding], {"signed": True, "verified": False}
    return [], {"signed": True, "verified": True, "signer": result.signer, "digest": result.digest}


def _applies(config: AuditConfig) -> bool:
    return bool(config.model_paths())


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    findings: list[Finding] = []
    per_model: dict[str, object] = {}
    for model in config.model_paths():
        found, facts = _check_model(config, model)
        findings.extend(found)
        per_model[str(model)] = facts
    return CheckResult(
        findings=findings,
        metrics={"models": per_model},
        artifacts=[{"path": str(m)} for m in config.model_paths()],
    )


CHECK = Check(
    name="signature",
    title="Model signatures",
    threats=(Threat.SUPPLY_CHAIN,),
    applies=_applies,
    run=_run,
)
