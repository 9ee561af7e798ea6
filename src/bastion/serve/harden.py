"""Output hardening: give a client less than the full probability vector, so each answer
teaches a would-be copier less (label only, top-k, rounding, reverse-sigmoid perturbation).

Policies are written `label`, `top-k:K`, `round:DECIMALS`, `reverse-sigmoid:BETA:GAMMA` and
applied in the order given. Each keeps the predicted class unchanged, except
reverse-sigmoid with a large beta, which the paper accepts as a trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bastion.errors import UsageError

_EPS = 1e-6


@dataclass(frozen=True)
class Policy:
    kind: str
    k: int = 1
    decimals: int = 2
    beta: float = 0.7
    gamma: float = 0.2

    def __str__(self) -> str:
        return {
            "label": "label",
            "top-k": f"top-k:{self.k}",
            "round": f"round:{self.decimals}",
            "reverse-sigmoid": f"reverse-sigmoid:{self.beta}:{self.gamma}",
        }[self.kind]


def parse_policy(text: str) -> Policy:
    kind, _, rest = text.strip().partition(":")
    args = [a for a in rest.split(":") if a] if rest else []
    try:
        if kind == "label" and not args:
            return Policy("label")
        if kind == "top-k" and len(args) == 1 and int(args[0]) >= 1:
            return Policy("top-k", k=int(args[0]))
        if kind == "round" and len(args) == 1 and 0 <= int(args[0]) <= 6:
            return Policy("round", decimals=int(args[0]))
        if kind == "reverse-sigmoid" and len(args) <= 2:
            beta, gamma = ([float(a) for a in args] + [0.7, 0.2][len(args):])[:2]
            if beta > 0 and gamma > 0:
                return Policy("reverse-sigmoid", beta=beta, gamma=gamma)
    except ValueError:
        pass
    raise UsageError(
        f"output policy {text!r}: expected label, top-k:K, round:DECIMALS (0-6) or "
        "reverse-sigmoid[:BETA[:GAMMA]] with positive numbers"
    )


def labels_only(policies: tuple[Policy, ...]) -> bool:
    return any(p.kind == "label" for p in policies)


def apply(policies: tuple[Policy, ...], probabilities: np.ndarray) -> np.ndarray:
    """Hardened probabilities, same shape; with `label`, one-hot rows of the argmax."""
    out = np.asarray(probabilities, dtype=np.float64)
    for policy in policies:
        out = _APPLY[policy.kind](policy, out)
    return out


def _label(_: Policy, p: np.ndarray) -> np.ndarray:
    return np.eye(p.shape[1])[p.argmax(axis=1)]


def _top_k(policy: Policy, p: np.ndarray) -> np.ndarray:
    if policy.k >= p.shape[1]:
        return p
    # Rank, not threshold: ties at the cut must not keep more than k classes.
    order = np.argsort(-p, axis=1, kind="stable")[:, : policy.k]
    mask = np.zeros_like(p, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return np.where(mask, p, 0.0)


def _round(policy: Policy, p: np.ndarray) -> np.ndarray:
    return np.round(p, policy.decimals)


def _reverse_sigmoid(policy: Policy, p: np.ndarray) -> np.ndarray:
    """Lee et al. 2019: subtract r = beta * (sigmoid(gamma * logit(p)) - 1/2) from each
    probability and renormalise. The perturbation flips the sign of the gradient a copier
    would learn from while leaving the ranking of large probabilities mostly intact."""
    clipped = np.clip(p, _EPS, 1.0 - _EPS)
    logit = np.log(clipped / (1.0 - clipped))
    r = policy.beta * (1.0 / (1.0 + np.exp(-policy.gamma * logit)) - 0.5)
    perturbed = np.clip(p - r, 0.0, 1.0)
    total = perturbed.sum(axis=1, keepdims=True)
    return np.divide(perturbed, total, out=np.full_like(perturbed, 1.0 / p.shape[1]),
                     where=total > 0)


_APPLY = {"label": _label, "top-k": _top_k, "round": _round, "reverse-sigmoid": _reverse_sigmoid}
