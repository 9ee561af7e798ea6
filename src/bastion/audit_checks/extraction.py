"""Model stealing: can the model be copied through the answers its deployment gives?
(`bastion assess extraction`, graded against `[serving]`)

Any model that answers with probabilities can be copied, so the question the audit asks is
about the deployment, not the model alone. A Knockoff-style copier queries the model as
`[serving]` answers (its output policy: probabilities, rounded, top-k, label or
reverse-sigmoid) with natural inputs — the training rows stand in for the in-domain data a
real attacker collects; without training data, uniform noise in the input range — up to the
declared `query_budget`, and fidelity (agreement with the model) is measured on the test
data. The grade follows what one client may do:

- high: a copy reaches `max_fidelity` within the attacker's budget, and one client can make
  that many queries in a day (no daily budget, a budget at or above what the copy needs, or
  no API keys, so nothing is per client);
- medium: the copy needs more queries than a key's daily budget, so it takes several
  key-days, each attributable to a key in the gateway's audit log;
- no finding: no copy reaches `max_fidelity` within the budget.

The extraction monitor does not lower the grade: sampling natural inputs looks like ordinary
traffic to a PRADA-style detector (bench/extraction shows it never fires on it), so the
monitor's mode is reported, not relied on.
"""

from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Any

import numpy as np

from bastion.audit_checks import Check, CheckContext, CheckResult, Plot
from bastion.audit_checks._model import classifier, input_range, model_file, model_inputs
from bastion.audit_checks._packages import shown
from bastion.config import AuditConfig, Extraction, Serving
from bastion.findings import Finding, Location, Rule, Severity, Threat, register

COPYABLE_AS_SERVED = register(Rule(
    "BST-AUD-EXT-001", "model-copyable-as-served",
    "A surrogate trained only on the answers the declared deployment gives agrees with the "
    "model on held-out data as often as the threat model calls a copy, within the attacker's "
    "query budget: a client can steal the model's behaviour and use the copy offline (to "
    "compete, or to craft adversarial examples against the original).",
    "In [serving]: require API keys, set daily_query_budget below the queries the copy "
    "needed (evidence: queries_needed) so copying takes many key-days, and answer with less "
    "(`output = \"label\"` or `\"top-k\"`); keep the monitor on for synthetic-query attacks. "
    "Re-check with `bastion audit --only extraction`.",
    Threat.MODEL_STEALING, Severity.HIGH, ("ML05", "AML.T0024.002"),
))

_QUERY_STEPS = (50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000)


def _applies(config: AuditConfig) -> bool:
    return (config.model is not None and config.data.test is not None
            and config.threat_model.extraction is not None)


def served_policies(serving: Serving | None) -> tuple[Any, ...]:
    """`[serving] output` as the gateway's output policies; no `[serving]`: probabilities."""
    from bastion.serve.harden import Policy

    if serving is None or serving.output == "probabilities":
        return ()
    if serving.output == "label":
        return (Policy("label"),)
    if serving.output == "top-k":
        return (Policy("top-k", k=serving.top_k),)
    if serving.output == "rounded":
        return (Policy("round", decimals=serving.round_digits),)
    return (Policy("reverse-sigmoid"),)


def checkpoints(budget: int, pool_rows: int | None) -> list[int]:
    """Query counts at which the copy is measured: a rough log scale up to the budget (or
    to the pool's size, when the attacker's pool is smaller)."""
    top = budget if pool_rows is None else min(budget, pool_rows)
    return [*(q for q in _QUERY_STEPS if q < top), top]


def grade(needed: int, serving: Serving | None) -> tuple[Severity, dict[str, object]]:
    """Severity of a copy that took `needed` queries, by what one client may ask per day."""
    per_client = serving is not None and serving.require_api_keys
    daily = serving.daily_query_budget if per_client else 0
    facts: dict[str, object] = {
        "api_keys": per_client,
        "daily_query_budget": daily or "unlimited",
        "monitor": serving.monitor if serving else "none declared",
    }
    if daily and needed > daily:
        facts["key_days_needed"] = math.ceil(needed / daily)
        return Severity.MEDIUM, facts
    return Severity.HIGH, facts


def _pool(config: AuditConfig) -> np.ndarray | None:
    """The training rows as the attacker's natural pool, when the project declares them."""
    from bastion.data import load_dataset

    declared = config.data.train
    if declared is None:
        return None
    dataset = load_dataset(config.resolve(declared.path), label=declared.label)
    return model_inputs(config, dataset).astype(np.float64)


def recheck_command(config: AuditConfig, policies: tuple[Any, ...], budgets: list[int],
                    clip: tuple[float, float] | None, seed: int) -> str:
    """The `bastion assess extraction` command that repeats the undefended run and the run
    as served, from the project folder."""
    test = config.data.test
    parts = ["bastion assess extraction", "--target", shown(config, model_file(config))]
    if config.model.factory:
        parts += ["--model-factory", config.model.factory]
    parts += ["--data", shown(config, config.resolve(test.path))]
    if test.label:
        parts += ["--label", shlex.quote(test.label)]
    train = config.data.train
    if train is not None:
        parts += ["--pool", shown(config, config.resolve(train.path))]
        if train.label:
            parts += ["--pool-label", shlex.quote(train.label)]
    parts += ["--budget", ",".join(map(str, budgets))]
    parts += [f"--defence {policy}" for policy in policies]
    if clip is not None:
        parts += ["--input-range", f"{clip[0]:g}:{clip[1]:g}"]
    return " ".join([*parts, "--seed", str(seed)])


def _finding(config: AuditConfig, declared: Extraction, run: Any, command: str
             ) -> Finding | None:
    copied = next((c for c in run.checkpoints if c.fidelity >= declared.max_fidelity), None)
    if copied is None:
        return None
    severity, facts = grade(copied.queries, config.serving)
    finding = COPYABLE_AS_SERVED.finding(
        f"A copy agrees with the model on {copied.fidelity:.0%} of test inputs after "
        f"{copied.queries} queries answered {run.defence}",
        Location(str(model_file(config))),
        severity=severity,
        evidence={"queries_needed": copied.queries, "fidelity": round(copied.fidelity, 4),
                  "max_fidelity": declared.max_fidelity, "query_budget": declared.query_budget,
                  "output": run.defence, **facts},
    )
    return dataclasses.replace(
        finding, remediation=f"{finding.remediation} Or repeat the attack: `{command}`.")


def _run(config: AuditConfig, ctx: CheckContext) -> CheckResult:
    from bastion.assess.extraction import attack, fidelity_image
    from bastion.data import load_dataset
    from bastion.models.classifier import predict
    from bastion.models.resolve import class_indices

    declared = config.threat_model.extraction
    test = load_dataset(config.resolve(config.data.test.path), label=config.data.test.label)
    x_test = model_inputs(config, test)
    pool = _pool(config)
    # Noise queries need the valid input range; a natural pool spans it by itself.
    clip = config.model.clip_values or (input_range(config, x_test) if pool is None else None)
    target = classifier(config, tuple(x_test.shape[1:]), clip)
    y_test = None if test.y is None else class_indices(test, target)
    eval_x = x_test.astype(np.float64)
    target_labels = predict(target, eval_x)
    budgets = checkpoints(declared.query_budget, None if pool is None else len(pool))
    served = served_policies(config.serving)
    runs = [
        attack(target, eval_x, y_test, pool=pool, budgets=budgets, policies=policies,
               target_labels=target_labels, rng=np.random.default_rng(ctx.seed))
        for policies in ([(), served] if served else [()])
    ]
    runs[0].defence = "probabilities"
    runs[-1].defence = f"as served: {config.serving.output if config.serving else 'probabilities'}"
    command = recheck_command(config, served, budgets, clip, ctx.seed)
    finding = _finding(config, declared, runs[-1], command)
    daily = config.serving.daily_query_budget if config.serving else 0
    plot = Plot(
        "Model extraction", "image/png",
        fidelity_image(runs, declared.max_fidelity, daily or None),
        caption=f"Fidelity of a Knockoff-style copy on {len(eval_x)} test inputs by queries, "
        f"drawn from {'the training rows' if pool is not None else 'uniform noise'}; "
        f"a copy counts at {declared.max_fidelity:.0%}.",
    )
    return CheckResult(
        findings=[finding] if finding else [],
        metrics={"runs": [run.to_json() for run in runs], "query_budget": declared.query_budget,
                 "max_fidelity": declared.max_fidelity,
                 "pool": "training rows" if pool is not None else "uniform noise",
                 "pool_rows": None if pool is None else len(pool), "recheck": command},
        plots=[plot],
        artifacts=[{"path": str(model_file(config)), "kind": "model"},
                   {"path": test.source, "kind": "data", "rows": len(eval_x)}],
    )


CHECK = Check(
    name="extraction",
    title="Model extraction (stealing) through the served answers",
    threats=(Threat.MODEL_STEALING,),
    applies=_applies,
    run=_run,
)
