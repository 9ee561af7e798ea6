"""bastion.data.poison on digits with 5% BadNets poison relabelled into one class: the
backdoor detector finds the poisoned rows from a torch model's penultimate features and from
the inputs alone; label flips, duplicates and outliers are found by their detectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from bastion.data.neural_cleanse import search_triggers
from bastion.data.poison import check_dataset, check_findings
from bastion.errors import InputError, UsageError
from bastion.models.torch_classifier import TorchClassifier

TARGET = 0


def _precision_recall(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    hits = len(np.intersect1d(flagged, truth))
    return hits / max(len(flagged), 1), hits / len(truth)


def test_backdoor_rows_found_in_model_features(poisoned_digits, backdoored_model) -> None:
    poisoned = poisoned_digits
    _, net = backdoored_model
    features = TorchClassifier(net, input_shape=(1, 8, 8)).features(poisoned.x)
    result = check_dataset(
        poisoned.x, poisoned.y, features=features, seed=0, detectors=("backdoor",)
    )
    precision, recall = _precision_recall(result.flagged("backdoor"), poisoned.rows)
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)
    assert [c for c, s in result.classes.items() if s["poisoned"]] == [TARGET]
    assert set(result.classes[TARGET]["trigger_features"]) <= {54, 55, 62, 63}  # the patch
    findings = check_findings(result, "digits.npz", tuple(range(10)))
    assert [f.rule_id for f in findings] == ["BST-DATA-011"]
    assert findings[0].evidence["classes"] == [str(TARGET)]


def test_backdoor_rows_found_from_inputs_alone(poisoned_digits) -> None:
    poisoned = poisoned_digits
    result = check_dataset(poisoned.x, poisoned.y, seed=1, detectors=("backdoor",))
    precision, recall = _precision_recall(result.flagged("backdoor"), poisoned.rows)
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)


def test_clean_digits_have_no_backdoor() -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    result = check_dataset(x, digits.target, seed=0, detectors=("backdoor",))
    assert len(result.flagged("backdoor")) == 0


def test_label_flips_duplicates_and_outliers() -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 6.0, 0.0], [0.0, 6.0, 6.0]])
    y = rng.integers(0, 3, 300)
    x = centres[y] + rng.normal(size=(300, 3))
    flipped = np.array([3, 50, 120, 200])
    noisy = y.copy()
    noisy[flipped] = (noisy[flipped] + 1) % 3
    x[10] = x[11]  # exact duplicate ...
    noisy[10] = (noisy[11] + 1) % 3  # ... with a conflicting label
    x[20] = centres[noisy[20]] + 40.0  # far outside its class
    result = check_dataset(x, noisy, seed=0, detectors=("labels", "duplicates", "outliers"))
    issues = set(result.flagged("label_issue").tolist())
    assert len(issues & set(flipped)) >= 3  # confident learning prunes by estimated noise rate
    assert issues <= set(flipped) | {10, 11}
    assert {10, 11} <= set(result.flagged("duplicate").tolist())
    assert 20 in result.flagged("outlier").tolist()
    ranked = result.ranked_rows(noisy, ("a", "b", "c"))
    assert ranked[0]["score"] >= ranked[-1]["score"]
    assert all(r["reasons"] for r in ranked)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(InputError, match="30 rows of data but 29 labels"):
        check_dataset(np.zeros((30, 2)), np.zeros(29, dtype=int))


def test_trigger_search_singles_out_the_backdoor_target(
    poisoned_digits, backdoored_model, clean_model
) -> None:
    clean_x = poisoned_digits.x[
        np.setdiff1d(np.arange(len(poisoned_digits.x)), poisoned_digits.rows)
    ]
    _, net = backdoored_model
    backdoored = search_triggers(
        TorchClassifier(net, input_shape=(1, 8, 8), clip_values=(0.0, 1.0)), clean_x, seed=0
    )
    assert backdoored.suspects == [TARGET]
    assert backdoored.norms[TARGET] == backdoored.norms.min()
    clean = search_triggers(
        TorchClassifier(clean_model, input_shape=(1, 8, 8), clip_values=(0.0, 1.0)),
        clean_x,
        seed=0,
    )
    assert clean.suspects == []


def test_trigger_search_needs_images() -> None:
    with pytest.raises(UsageError, match=r"images of shape \(n, C, H, W\)"):
        search_triggers(object(), np.zeros((5, 3)))
