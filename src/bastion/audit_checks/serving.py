"""Serving configuration review: the `[serving]` section of bastion.toml, read as the options
of `bastion serve`, against the defaults whose absence made ShellTorch (TorchServe's open
management API) and Ray's unauthenticated job API possible."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

from bastion.audit_checks import Check, CheckContext, CheckResult
from bastion.config import DEFAULT_CONFIG, AuditConfig, Serving
from bastion.findings import Finding, Location, Rule, Severity, Threat, register

_RECHECK = "Re-check with `bastion audit --only serving`."


def _rule(
    rule_id: str, name: str, help_text: str, fix: str, threat: Threat, severity: Severity,
    references: tuple[str, ...],
) -> Rule:
    return register(
        Rule(rule_id, name, help_text, f"{fix} {_RECHECK}", threat, severity, references)
    )


NO_TLS = _rule(
    "BST-AUD-SRV-001", "serving-exposed-without-tls",
    "The gateway listens beyond this machine without TLS: API keys, inputs and predictions "
    "cross the network in clear text, and anyone on the path can read or alter them.",
    "Bind to 127.0.0.1 behind a TLS-terminating proxy, or set tls_cert and tls_key in "
    "[serving] (`bastion serve MODEL --tls-cert cert.pem --tls-key key.pem`) and drop "
    "`insecure = true`.",
    Threat.NETWORK, Severity.HIGH, ("ML09", "AML.T0049"),
)
NO_AUTH = _rule(
    "BST-AUD-SRV-002", "serving-without-api-keys",
    "Anyone who can reach the endpoint can query the model: no per-client limits, budgets or "
    "audit trail can apply, and extraction or abuse cannot be traced to a client.",
    "Set `require_api_keys = true` in [serving] and issue one key per client with "
    "`bastion api-keys create --name CLIENT`.",
    Threat.NETWORK, Severity.HIGH, ("ML05", "AML.T0040"),
)
NO_RATE_LIMIT = _rule(
    "BST-AUD-SRV-003", "serving-without-rate-limits",
    "Without rate limits one client can send queries as fast as the model answers: model "
    "extraction needs thousands of queries, and a flood denies the service to everyone else.",
    "Set rate_limit_per_key and rate_limit_per_address (requests per minute) in [serving].",
    Threat.MODEL_STEALING, Severity.MEDIUM, ("ML05", "AML.T0024.002", "AML.T0029"),
)
FULL_OUTPUT = _rule(
    "BST-AUD-SRV-004", "serving-full-probabilities",
    "The gateway returns every class probability at full precision, which is what model "
    "extraction, membership inference and model inversion feed on.",
    "Set `output = \"rounded\"` (round_digits = 2), `\"top-k\"` or `\"label\"` in [serving].",
    Threat.MODEL_STEALING, Severity.MEDIUM, ("ML05", "ML04", "AML.T0024.002"),
)
CORS_ANY = _rule(
    "BST-AUD-SRV-005", "serving-cors-any-origin",
    "CORS allows every origin: any web page a user of the API visits can call the model "
    "from that user's browser and network position.",
    "List the origins that need the API in cors_origins, or leave it empty (closed).",
    Threat.NETWORK, Severity.MEDIUM, ("ML05", "AML.T0049"),
)
NO_BODY_LIMIT = _rule(
    "BST-AUD-SRV-006", "serving-without-body-limit",
    "Requests of any size are accepted: one large or deeply nested body can exhaust the "
    "gateway's memory before input validation runs.",
    "Set max_body_bytes in [serving] (the default is 1 MiB).",
    Threat.NETWORK, Severity.MEDIUM, ("ML01", "AML.T0029"),
)
NO_MONITOR = _rule(
    "BST-AUD-SRV-007", "serving-extraction-monitor-off",
    "The query monitor that spots extraction patterns (PRADA-style distance statistics) is "
    "off, so a slow, well-spread copying attack is never noticed.",
    "Set `monitor = \"throttle\"` (or \"block\") in [serving].",
    Threat.MODEL_STEALING, Severity.LOW, ("ML05", "AML.T0024.002"),
)
OVER_BUDGET = _rule(
    "BST-AUD-SRV-008", "serving-budget-above-threat-model",
    "The threat model assesses extraction up to a query budget, but the gateway lets a key "
    "make more queries per day than that (or has no budget), so the assessment does not "
    "bound what an attacker can do.",
    "Set daily_query_budget in [serving] at or below [threat_model.extraction] query_budget.",
    Threat.MODEL_STEALING, Severity.LOW, ("ML05", "AML.T0024.002"),
)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: reachable from wherever it resolves


def _tls(s: Serving) -> dict[str, object] | None:
    if s.tls_cert is not None or is_loopback(s.host):
        return None
    return {"host": s.host, "port": s.port, "insecure": s.insecure}


def _auth(s: Serving) -> dict[str, object] | None:
    return None if s.require_api_keys else {"require_api_keys": False}


def _rate(s: Serving) -> dict[str, object] | None:
    if s.rate_limit_per_key and s.rate_limit_per_address:
        return None
    return {"rate_limit_per_key": s.rate_limit_per_key,
            "rate_limit_per_address": s.rate_limit_per_address}


def _output(s: Serving) -> dict[str, object] | None:
    return {"output": s.output} if s.output == "probabilities" else None


def _cors(s: Serving) -> dict[str, object] | None:
    return {"cors_origins": s.cors_origins} if "*" in s.cors_origins else None


def _body(s: Serving) -> dict[str, object] | None:
    return None if s.max_body_bytes else {"max_body_bytes": 0}


def _monitor(s: Serving) -> dict[str, object] | None:
    return {"monitor": "off"} if s.monitor == "off" else None


# What each rule reads: the [serving] key a finding points at, and the test.
_REVIEW: tuple[tuple[Rule, str, str, Callable[[Serving], dict[str, object] | None]], ...] = (
    (NO_TLS, "host", "listens on {host} without TLS", _tls),
    (NO_AUTH, "require_api_keys", "accepts requests without an API key", _auth),
    (NO_RATE_LIMIT, "rate_limit_per_key", "has no rate limit per key or per address", _rate),
    (FULL_OUTPUT, "output", "returns full-precision probabilities", _output),
    (CORS_ANY, "cors_origins", "allows cross-origin calls from any site", _cors),
    (NO_BODY_LIMIT, "max_body_bytes", "accepts request bodies of any size", _body),
    (NO_MONITOR, "monitor", "runs without the extraction monitor", _monitor),
)


def _budget(config: AuditConfig, s: Serving, where: Path) -> Finding | None:
    extraction = config.threat_model.extraction
    if extraction is None:
        return None
    if s.daily_query_budget and s.daily_query_budget <= extraction.query_budget:
        return None
    return OVER_BUDGET.finding(
        "Gateway lets a key make more daily queries than the assessed extraction budget",
        Location(str(where), "serving.daily_query_budget"),
        evidence={"daily_query_budget": s.daily_query_budget or "unlimited",
                  "assessed_query_budget": extraction.query_budget},
    )


def review(config: AuditConfig) -> list[Finding]:
    serving = config.serving
    if serving is None:
        return []
    where = config.source or config.root / DEFAULT_CONFIG
    findings = []
    for rule, key, title, test in _REVIEW:
        evidence = test(serving)
        if evidence is not None:
            findings.append(
                rule.finding(
                    "Gateway " + title.format(host=serving.host),
                    Location(str(where), f"serving.{key}"),
                    evidence=evidence,
                )
            )
    budget = _budget(config, serving, where)
    return findings + ([budget] if budget else [])


def _applies(config: AuditConfig) -> bool:
    return config.serving is not None


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    findings = review(config)
    reviewed = len(_REVIEW) + (config.threat_model.extraction is not None)
    return CheckResult(findings=findings, metrics={"settings_reviewed": reviewed,
                                                   "problems": len(findings)})


CHECK = Check(
    name="serving",
    title="Serving configuration review",
    threats=(Threat.NETWORK, Threat.MODEL_STEALING),
    applies=_applies,
    run=_run,
)
