"""Adversarial-example (evasion) assessment: attacks, and a robustness evaluation that runs
them in sequence like AutoAttack and checks its own result for gradient masking."""

from bastion.assess.evasion.attacks import (
    ATTACKS,
    AttackResult,
    apgd_ce,
    apgd_targeted,
    fgsm,
    hop_skip_jump,
    pgd,
    square,
)
from bastion.assess.evasion.constraints import Constraints, perturbation_norms, project

__all__ = [
    "ATTACKS",
    "AttackResult",
    "Constraints",
    "apgd_ce",
    "apgd_targeted",
    "fgsm",
    "hop_skip_jump",
    "perturbation_norms",
    "pgd",
    "project",
    "square",
]
