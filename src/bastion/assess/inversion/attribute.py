"""Attribute inference: does querying the model reveal a record's sensitive column?

Two attackers who know a record's other features and its label, scored against a baseline
attacker who knows the same but never sees the model's output:

- learned (Shokri/ART black-box style): a classifier trained on auxiliary records maps
  (other features, label, the model's probabilities for the record) to the sensitive value;
  the baseline is the same learner without the probabilities;
- candidate (Fredrikson et al. 2014): try every value of the sensitive column, query the
  model, and pick the value under which the model is most confident in the known label,
  weighted by the value's frequency.

Advantage = attack accuracy - baseline accuracy on the target records. A continuous
sensitive column is cut into quantile bins first, and the bin is what is inferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bastion.errors import InputError
from bastion.models.classifier import Classifier

MAX_CATEGORIES = 10
QUANTILE_BINS = 4


@dataclass(frozen=True)
class AttributeInference:
    column: str
    values: np.ndarray  # the categories (or bin edges' midpoints) the attacker chooses from
    binned: bool
    records: int
    baseline_accuracy: float  # without querying the model
    majority_accuracy: float  # always guessing the most frequent value
    attack_accuracy: dict[str, float]  # per attack: learned, candidate

    @property
    def best_attack(self) -> str:
        return max(self.attack_accuracy, key=self.attack_accuracy.__getitem__)

    @property
    def advantage(self) -> float:
        return self.attack_accuracy[self.best_attack] - self.baseline_accuracy

    @property
    def noise_margin(self) -> float:
        """Two standard errors of the accuracy difference: smaller advantages are noise."""
        best = self.attack_accuracy[self.best_attack]
        variance = best * (1 - best) + self.baseline_accuracy * (1 - self.baseline_accuracy)
        return 2.0 * float(np.sqrt(variance / max(self.records, 1)))

    def metrics(self) -> dict:
        return {
            "sensitive_column": self.column,
            "binned": self.binned,
            "records": self.records,
            "baseline_accuracy": round(self.baseline_accuracy, 6),
            "majority_accuracy": round(self.majority_accuracy, 6),
            "attack_accuracy": {k: round(v, 6) for k, v in self.attack_accuracy.items()},
            "best_attack": self.best_attack,
            "advantage": round(self.advantage, 6),
            "noise_margin": round(self.noise_margin, 6),
        }


def infer_attribute(
    classifier: Classifier,
    x: np.ndarray,
    y: np.ndarray,
    sensitive: int,
    *,
    column: str,
    x_aux: np.ndarray | None = None,
    y_aux: np.ndarray | None = None,
    seed: int = 0,
) -> AttributeInference:
    """Infer column `sensitive` of the target records (x, y), typically training members.

    The learned attack trains on (x_aux, y_aux), records whose sensitive value the attacker
    knows; without them, on a random half of (x, y), scored on the other half.
    """
    if x.ndim != 2 or not 0 <= sensitive < x.shape[1]:
        raise InputError(f"sensitive column {column!r} is not a column of the tabular data")
    rng = np.random.default_rng(seed)
    if x_aux is None:
        order = rng.permutation(len(x))
        half = len(x) // 2
        x_aux, y_aux = x[order[:half]], y[order[:half]]
        x, y = x[order[half:]], y[order[half:]]
    if len(x) < 10 or len(x_aux) < 10:
        raise InputError("attribute inference needs at least 20 records (10 to learn from)")
    codes, values, binned = _categories(np.concatenate([x_aux, x])[:, sensitive])
    aux_codes, target_codes = codes[: len(x_aux)], codes[len(x_aux) :]
    majority = np.bincount(aux_codes, minlength=len(values)).argmax()
    baseline = _learned(x_aux, y_aux, aux_codes, x, y, sensitive, None, None, seed)
    learned = _learned(
        x_aux, y_aux, aux_codes, x, y, sensitive,
        classifier.predict_proba(x_aux), classifier.predict_proba(x), seed,
    )  # fmt: skip
    prior = np.bincount(aux_codes, minlength=len(values)) / len(aux_codes)
    candidate = _candidate(classifier, x, y, sensitive, values, prior)
    return AttributeInference(
        column=column,
        values=values,
        binned=binned,
        records=len(x),
        baseline_accuracy=float((baseline == target_codes).mean()),
        majority_accuracy=float((target_codes == majority).mean()),
        attack_accuracy={
            "learned": float((learned == target_codes).mean()),
            "candidate": float((candidate == target_codes).mean()),
        },
    )


def _categories(column: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Codes 0..m-1 and the value each stands for; quantile bins for a continuous column."""
    distinct = np.unique(column)
    if len(distinct) <= MAX_CATEGORIES:
        return np.searchsorted(distinct, column), distinct, False
    edges = np.unique(np.quantile(column, np.linspace(0, 1, QUANTILE_BINS + 1)[1:-1]))
    codes = np.searchsorted(edges, column, side="right")
    # Each bin is represented by the median of its values, the value the candidate attack tries.
    values = np.array([np.median(column[codes == b]) for b in range(len(edges) + 1)])
    return codes, values, True


def _features(x, y, sensitive, probs) -> np.ndarray:
    parts = [np.delete(x, sensitive, axis=1), y.reshape(-1, 1)]
    if probs is not None:
        parts.append(probs)
    return np.column_stack(parts)


def _learned(x_aux, y_aux, codes, x, y, sensitive, probs_aux, probs, seed) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    if len(np.unique(codes)) == 1:
        return np.full(len(x), codes[0])
    model = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):  # small data: threads only contend
        model.fit(_features(x_aux, y_aux, sensitive, probs_aux), codes)
        return model.predict(_features(x, y, sensitive, probs))


def _candidate(classifier, x, y, sensitive, values, prior) -> np.ndarray:
    scores = np.empty((len(x), len(values)))
    for index, value in enumerate(values):
        trial = x.copy()
        trial[:, sensitive] = value
        scores[:, index] = classifier.predict_proba(trial)[np.arange(len(x)), y] * prior[index]
    return scores.argmax(axis=1)
