"""Membership inference on a real overfit MLP: the calibrated attacks beat the loss attack
at low false-positive rates; bad reference training functions fail with one clear line."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from bastion.assess.membership import assess_membership, plot_roc
from bastion.errors import InputError, UsageError
from bastion.findings import Severity

N = 200  # members and as many non-members: 1% FPR is two records


def _data(seed: int = 0) -> tuple[np.ndarray, ...]:
    x, y = make_classification(
        n_samples=2 * N, n_features=10, n_informative=6, n_classes=3, flip_y=0.1,
        random_state=seed,
    )  # fmt: skip
    return x[:N], y[:N], x[N:], y[N:]


def _overfit_mlp(seed: int = 0) -> MLPClassifier:
    return MLPClassifier(
        hidden_layer_sizes=(64,), alpha=1e-6, max_iter=1000, tol=1e-6, n_iter_no_change=50,
        random_state=seed,
    )  # fmt: skip


@pytest.fixture(scope="module")
def overfit():
    xm, ym, xn, yn = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _overfit_mlp().fit(xm, ym)
        assessment = assess_membership(
            model, xm, ym, xn, yn,
            attacks=["loss", "shadow", "lira-offline", "lira-online", "rmia-offline",
                     "rmia-online"],
            references=6, n_jobs=2, seed=0,
        )  # fmt: skip
    return model, (xm, ym, xn, yn), assessment


def test_target_is_overfit(overfit) -> None:
    model, (xm, ym, xn, yn), _ = overfit
    assert model.score(xm, ym) == 1.0
    assert model.score(xn, yn) < 0.8


def test_lira_and_rmia_beat_the_loss_attack_at_low_fpr(overfit) -> None:
    assessment = overfit[2]
    tpr = {r.attack: r.roc.tpr_at_fpr[0.01] for r in assessment.results}
    for attack in ("lira-online", "lira-offline", "rmia-online", "rmia-offline"):
        assert tpr[attack] >= 3 * tpr["loss"] + 0.03, tpr
    assert all(r.roc.auc > 0.6 for r in assessment.results)


def test_metrics_findings_and_exposed_records(overfit) -> None:
    assessment = overfit[2]
    rmia = assessment.result("rmia-offline")
    assert 0.0 <= rmia.details["a"] <= 1.0
    metrics = assessment.metrics()
    assert metrics["members"] == N and metrics["references"] == 6
    assert {m["attack"] for m in metrics["attacks"]} >= {"loss", "rmia-online"}
    (finding,) = assessment.findings
    assert finding.rule_id == "BST-PRIV-001"
    assert finding.severity == Severity.HIGH  # AUC near 0.8
    assert finding.references == ("ML04", "AML.T0024.000")
    assert "bastion assess membership" in finding.remediation
    exposed = rmia.exposed
    assert len(exposed) == 10 and exposed.max() < N
    # The most exposed members score above every member the attack ranks last.
    assert rmia.scores[exposed].min() >= np.median(rmia.scores[:N])


def test_roc_plot_is_a_png(overfit, tmp_path) -> None:
    path = tmp_path / "roc.png"
    plot_roc(overfit[2].results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_scores_in_one_process_or_many() -> None:
    xm, ym, xn, yn = _data(1)
    model = LogisticRegression(max_iter=500).fit(xm, ym)
    runs = [
        assess_membership(model, xm, ym, xn, yn, attacks="lira-online", references=4,
                          n_jobs=jobs, seed=3).results[0].scores
        for jobs in (1, 2)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])


def _raising_train_fn(x, y, seed):
    raise RuntimeError("out of memory on the training node")


def _two_class_train_fn(x, y, seed):
    return LogisticRegression().fit(x, (y > 0).astype(int))


def test_failing_training_function_is_named() -> None:
    xm, ym, xn, yn = _data(2)
    model = LogisticRegression(max_iter=500).fit(xm, ym)
    with pytest.raises(InputError, match=r"reference model 0: the training function raised "
                       r"RuntimeError: out of memory on the training node"):
        assess_membership(model, xm, ym, xn, yn, attacks="lira", references=2, n_jobs=2,
                          train_fn=_raising_train_fn)


def test_training_function_returning_wrong_shape() -> None:
    xm, ym, xn, yn = _data(2)
    model = LogisticRegression(max_iter=500).fit(xm, ym)
    expected = r"shape \(400, 2\); expected \(400, 3\) \(it knows classes \[0, 1\]\)"
    with pytest.raises(InputError, match=expected):
        assess_membership(model, xm, ym, xn, yn, attacks="rmia-online", references=2,
                          n_jobs=1, train_fn=_two_class_train_fn)


def test_too_few_records_for_the_references() -> None:
    xm, ym, xn, yn = _data(2)
    model = LogisticRegression(max_iter=500).fit(xm, ym)
    with pytest.raises(InputError, match="too few records for 64 reference models"):
        assess_membership(model, xm[:30], ym[:30], xn[:30], yn[:30], attacks="lira",
                          references=64, n_jobs=1)


def test_unknown_attack_and_torch_without_training_function() -> None:
    xm, ym, xn, yn = _data(2)
    model = LogisticRegression(max_iter=500).fit(xm, ym)
    with pytest.raises(UsageError, match="unknown membership attack 'loss-online'"):
        assess_membership(model, xm, ym, xn, yn, attacks="loss-online")
    with pytest.raises(UsageError, match="at least 4"):
        assess_membership(model, xm, ym, xn, yn, attacks="rmia-offline", references=2, n_jobs=1)


def test_reference_models_on_a_local_ray_instance() -> None:
    ray = pytest.importorskip("ray")
    xm, ym, xn, yn = _data(3)
    model = LogisticRegression(max_iter=500).fit(xm[:100], ym[:100])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = assess_membership(model, xm[:100], ym[:100], xn[:100], yn[:100],
                                   attacks="lira-online", references=2, seed=5,
                                   ray_address="auto")
    finally:
        ray.shutdown()
    local = assess_membership(model, xm[:100], ym[:100], xn[:100], yn[:100],
                              attacks="lira-online", references=2, seed=5, n_jobs=1)
    np.testing.assert_allclose(on_ray.results[0].scores, local.results[0].scores)


def _torch_train_fn(x, y, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(x.shape[1], 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    features = torch.as_tensor(x, dtype=torch.float32)
    labels = torch.as_tensor(y)
    for _ in range(50):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(features), labels).backward()
        optimizer.step()
    return module.eval()


def test_torch_target_with_a_training_function() -> None:
    torch = pytest.importorskip("torch")
    xm, ym, xn, yn = _data(4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats contended ones
    try:
        target = _torch_train_fn(xm, ym, 0)
        assessment = assess_membership(target, xm, ym, xn, yn, attacks=["lira-online", "shadow"],
                                       references=2, train_fn=_torch_train_fn, n_jobs=1)
        with pytest.raises(UsageError, match="need a training function"):
            assess_membership(target, xm, ym, xn, yn, attacks="lira", references=2)
    finally:
        torch.set_num_threads(threads)
    assert [r.attack for r in assessment.results] == ["lira-online", "shadow"]
    assert all(0.0 <= r.roc.auc <= 1.0 for r in assessment.results)
