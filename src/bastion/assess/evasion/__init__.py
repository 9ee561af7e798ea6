"""Adversarial-example (evasion) assessment: attacks, and a robustness evaluation that runs
them in sequence like AutoAttack and checks its own result for gradient masking."""

from bastion.assess.evasion.attacks import (
    ATTACKS,
    AttackResult,
    apgd_ce,
    apgd_dlr,
    apgd_targeted,
    fab_targeted,
    fgsm,
    hop_skip_jump,
    pgd,
    square,
)
from bastion.assess.evasion.constraints import Constraints, perturbation_norms, project
from bastion.assess.evasion.robustness import (
    EvasionPolicy,
    RobustnessResult,
    evaluate_robustness,
)

__all__ = [
    "ATTACKS",
    "AttackResult",
    "Constraints",
    "EvasionPolicy",
    "RobustnessResult",
    "apgd_ce",
    "apgd_dlr",
    "apgd_targeted",
    "evaluate_robustness",
    "fab_targeted",
    "fgsm",
    "hop_skip_jump",
    "perturbation_norms",
    "pgd",
    "project",
    "square",
]
