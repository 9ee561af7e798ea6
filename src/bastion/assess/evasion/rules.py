"""The evasion assessment's rules: stable ids, what each means and how to fix it."""

from __future__ import annotations

from bastion.findings import Rule, Severity, Threat, register

_EVASION = ("ML01", "AML.T0015", "AML.T0043")
_RECHECK = (
    "Re-check with `bastion assess evasion --model MODEL --data DATA --eps EPS --norm NORM`."
)


def _define(rule_id: str, name: str, help_text: str, remediation: str,
            severity: Severity) -> Rule:
    return register(
        Rule(rule_id, name, help_text, remediation, Threat.ADVERSARIAL, severity, _EVASION)
    )


LOW_ROBUST_ACCURACY = _define(
    "BST-EVA-001",
    "evasion-robust-accuracy",
    "Robust accuracy is the share of points the model still classifies correctly when an "
    "attacker may change each input within the declared epsilon. Attacks ran in sequence on "
    "the points still standing (AutoAttack style), so the number is an upper bound on what "
    "the model withstands: an attacker who can perturb inputs this much flips the rest.",
    "Harden the model with adversarial training: "
    "`bastion.training.adversarial.pgd_training(module, x, y, eps=EPS)` (Madry) or "
    "`trades_training(...)`, then " + _RECHECK[0].lower() + _RECHECK[1:],
    Severity.HIGH,
)
NOT_MONOTONE = _define(
    "BST-EVA-002",
    "evasion-gradient-masking-not-monotone",
    "Robust accuracy rose although epsilon grew. A larger budget contains every smaller one, "
    "so a real robust accuracy can only fall: the attacks are failing to find points they "
    "should find, the classic sign of gradient masking (Athalye et al. 2018; Carlini et al. "
    "2019). The reported robust accuracy is not trustworthy.",
    "Do not rely on these numbers. Look for non-differentiable or randomised preprocessing, "
    "saturating activations or defences that shatter gradients; run more steps and restarts "
    "and the black-box attacks (--attacks apgd-ce,apgd-t,square --budget 5000). " + _RECHECK,
    Severity.HIGH,
)
NOT_BREAKABLE = _define(
    "BST-EVA-003",
    "evasion-gradient-masking-unbounded",
    "With an epsilon that covers the whole valid input range, any input can be turned into "
    "any other, so robust accuracy must reach about zero. It did not: the attacks cannot "
    "follow the model's gradients, which points to gradient masking rather than robustness.",
    "Do not rely on these numbers. Check the model for gradient obfuscation (quantisation, "
    "non-differentiable layers, randomness) and evaluate with the black-box attacks "
    "(--attacks square,hopskipjump --budget 5000). " + _RECHECK,
    Severity.HIGH,
)
BLACK_BOX_WINS = _define(
    "BST-EVA-004",
    "evasion-gradient-masking-black-box-wins",
    "A black-box attack, which sees only the model's outputs, fooled points that the "
    "white-box gradient attacks could not. Gradients carry strictly more information, so "
    "this means the gradients are misleading the white-box attacks (gradient masking).",
    "Treat the white-box numbers as optimistic; the robust accuracy reported already counts "
    "the black-box successes. Find the cause of the masking (see BST-EVA-002) and raise the "
    "query budget (--budget). " + _RECHECK,
    Severity.HIGH,
)
