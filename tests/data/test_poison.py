"""bastion.data.poison on digits with 5% BadNets poison relabelled into one class: the
backdoor detector finds the poisoned rows from a torch model's penultimate features and from
the inputs alone, and still at 10% and 20%, where the poison outnumbers the class's own
rows; label flips, duplicates and outliers are found by their detectors."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from bastion.assess.poisoning import Trigger, badnets
from bastion.data import poison
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


@pytest.mark.parametrize("rate", [0.10, 0.20])
def test_backdoor_that_outnumbers_its_class_is_found(rate: float) -> None:
    # At 10% of the data the poison is half of the target class and at 20% two thirds: the
    # poisoned cluster is the larger one, which a relative-size rule never looks at.
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    poisoned = badnets(x, digits.target, rate, np.random.default_rng(3), target=TARGET,
                       trigger=Trigger.fit(x, 2))
    result = check_dataset(poisoned.x, poisoned.y, seed=0, detectors=("backdoor",))
    precision, recall = _precision_recall(result.flagged("backdoor"), poisoned.rows)
    assert recall >= 0.9 and precision >= 0.8, (precision, recall)
    assert [c for c, s in result.classes.items() if s["poisoned"]] == [TARGET]
    assert result.classes[TARGET]["cluster_fraction"] >= 0.45
    # The cluster score leans towards the poison, not towards the class's own rows.
    own = np.setdiff1d(np.flatnonzero(poisoned.y == TARGET), poisoned.rows)
    score = result.scores["cluster"]
    assert np.median(score[poisoned.rows]) > 0 and np.median(score[own]) == 0


def test_clean_digits_have_no_backdoor(clean_model) -> None:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    result = check_dataset(x, digits.target, seed=0, detectors=("backdoor",))
    assert len(result.flagged("backdoor")) == 0
    features = TorchClassifier(clean_model, input_shape=(1, 8, 8)).features(x)
    result = check_dataset(x, digits.target, features=features, detectors=("backdoor",))
    assert len(result.flagged("backdoor")) == 0
    assert not any(stats["poisoned"] for stats in result.classes.values())


def _two_styles(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """Rows from two offset blobs (about a quarter in the second): a class with a sub-style."""
    values = rng.normal(size=(rows, width))
    values[: rows // 4] += 3.0
    return values


def test_batched_class_statistics_match_scikit_learn() -> None:
    """The all-classes-at-once PCA, the two-cluster silhouette and the nearest-neighbour vote
    give what scikit-learn's PCA, silhouette_score and a MinMaxScaler + 5-NN pipeline give."""
    from sklearn.decomposition import PCA
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    rng = np.random.default_rng(0)
    sizes = [40, 25, 60]
    y = np.repeat(np.arange(3), sizes)
    for width in (12, 80):  # covariance path (width <= rows), Gram path (width > rows)
        space = np.concatenate([_two_styles(rng, n, width) for n in sizes])
        [(labels, index, mask)] = list(poison._class_groups(y, width))
        projected = poison._principal_projection(space[index], mask, 10)
        small, _ = poison._two_means(projected, mask)
        for i, label in enumerate(labels):
            rows = index[i][mask[i]]
            assert set(rows) == set(np.flatnonzero(y == label))
            ours = projected[i][mask[i]]
            theirs = PCA(10).fit_transform(space[rows])
            signs = np.sign((ours * theirs).sum(axis=0))
            np.testing.assert_allclose(ours * signs, theirs, atol=1e-8)
            split = small[i][mask[i]]
            assert 0 < split.sum() <= len(split) / 2
            assert poison._silhouette(ours, split) == pytest.approx(
                silhouette_score(ours, split.astype(int)), abs=1e-12
            )
    # Classes of more than EXACT_PCA_UP_TO rows and features: randomized PCA, which matches
    # the exact one closely where the spectrum decays (as real features' does).
    sizes, width = [400, 300], 300
    y = np.repeat(np.arange(2), sizes)
    decay = 0.85 ** np.arange(width)
    space = np.concatenate([_two_styles(rng, n, width) * decay for n in sizes])
    [(labels, index, mask)] = list(poison._class_groups(y, width))
    projected = poison._principal_projection(space[index], mask, 10)
    for i in range(len(labels)):
        ours = projected[i][mask[i]]
        theirs = PCA(10, svd_solver="full").fit_transform(space[index[i][mask[i]]])
        signs = np.sign((ours * theirs).sum(axis=0))
        np.testing.assert_allclose(ours * signs, theirs, atol=1e-5 * np.abs(theirs).max())
    train = rng.normal(size=(300, 6)) * rng.uniform(0.1, 10.0, 6)
    labels = rng.integers(0, 4, 300)
    queries = rng.normal(size=(120, 6)) * 4.0
    pipeline = make_pipeline(MinMaxScaler(), KNeighborsClassifier(5)).fit(train, labels)
    np.testing.assert_array_equal(
        poison._nearest_neighbour_vote(train, labels, queries, 5), pipeline.predict(queries)
    )
    values = rng.normal(size=(4, 333))
    values[:, :100] = 0.0  # ties, as in image pixels
    np.testing.assert_allclose(
        poison._quantiles(values, (0.01, 0.99)), np.quantile(values, [0.01, 0.99], axis=1)
    )


def test_sampled_silhouette_of_a_large_class_is_close_to_the_exact_one() -> None:
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(4)
    values = rng.normal(size=(3000, 10))
    small = np.zeros(3000, dtype=bool)
    small[:60] = True  # 2% of the class: the stratified sample must still hold it
    values[small] += 2.5
    exact = silhouette_score(values, small.astype(int))
    for seed in range(3):
        sampled = poison._silhouette(values, small, np.random.default_rng(seed))
        assert sampled == pytest.approx(exact, abs=0.03)
    assert poison._silhouette(values[:500], small[:500], rng) == pytest.approx(
        silhouette_score(values[:500], small[:500].astype(int)), abs=1e-12
    )


def test_class_groups_cover_every_class_once_within_budget() -> None:
    y = np.repeat(np.arange(5), [30, 500, 12, 7, 90])
    groups = list(poison._class_groups(y, width=10, budget=2_000))
    seen = [int(label) for labels, _, _ in groups for label in labels]
    assert sorted(seen) == [0, 1, 2, 4]  # class 3 has fewer than 10 rows
    for labels, index, mask in groups:
        assert len(labels) == 1 or mask.size * 10 <= 2_000  # a class alone may exceed it
        for label, rows, real in zip(labels, index, mask, strict=True):
            np.testing.assert_array_equal(rows[real], np.flatnonzero(y == label))


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


def test_column_order_gives_order_statistics_and_rules_out_like_a_full_count() -> None:
    """The sorted-column lookups the trigger test uses agree with a full sort, and the
    trigger it finds is the one a plain per-feature quantile test finds."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(300, 12)).astype(np.float32)
    order = poison.ColumnOrder(x)
    features = np.array([7, 2, 11])
    np.testing.assert_array_equal(order.at(features, 0), x[:, features].min(axis=0))
    np.testing.assert_array_equal(order.at(features, 150), np.sort(x, axis=0)[150, features])
    np.testing.assert_array_equal(np.flatnonzero(order.sorted), [2, 7, 11])  # only these
    y = np.repeat([0, 1, 2], 100)
    members = np.arange(10, 40)
    x[members, 4] = 9.0  # a value no other class reaches: the trigger
    x[members, 5] = 4.0  # a common value, but inside the other classes' range
    others = y != 0
    found = poison.shared_trigger(x, members, others, 0.8, order=poison.ColumnOrder(x))
    np.testing.assert_array_equal(found, [4])
    low, high = np.quantile(x[others], [0.01, 0.99], axis=0)
    plain = np.flatnonzero(
        np.maximum((x[members] > high).mean(0), (x[members] < low).mean(0)) >= 0.8
    )
    np.testing.assert_array_equal(found, plain)
