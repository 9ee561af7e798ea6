"""Each attack lowers accuracy, stays exactly inside its norm ball and the valid range, and
gives the same result from the same seed."""

from __future__ import annotations

import numpy as np
import pytest

from bastion.assess import evasion
from bastion.assess.evasion import Constraints, perturbation_norms, project
from bastion.errors import InputError, UsageError
from bastion.models.classifier import accuracy
from bastion.models.torch_attacks import apgd_checkpoints

FAST = {
    "fgsm": {},
    "pgd": {"steps": 10, "restarts": 2},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "n_targets": 2},
    "square": {"max_queries": 100},
    "hopskipjump": {"max_queries": 300},
}
EPS = {"inf": 0.1, "2": 1.0}


def _run(name, clf, x, y, norm, seed=3, **extra):
    function, _ = evasion.ATTACKS[name]
    return function(clf, x, y, eps=EPS[norm], norm=norm, seed=seed, **{**FAST[name], **extra})


def _assert_inside(x, result, eps, norm, low=0.0, high=1.0):
    assert result.x_adv.dtype == x.dtype and result.x_adv.shape == x.shape
    assert perturbation_norms(x, result.x_adv, norm).max() <= eps
    assert result.x_adv.min() >= low and result.x_adv.max() <= high


@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("name", list(FAST))
def test_attack_on_torch_mlp_lowers_accuracy_inside_ball_and_reproducibly(
    name, norm, torch_mlp, digits
) -> None:
    x, y = digits[0][:40], digits[1][:40]
    clean = accuracy(torch_mlp, x, y)
    result = _run(name, torch_mlp, x, y, norm)
    _assert_inside(x, result, EPS[norm], norm)
    assert accuracy(torch_mlp, result.x_adv, y) < clean - 0.2
    predicted = torch_mlp.predict_proba(result.x_adv).argmax(1)
    np.testing.assert_array_equal(result.success, predicted != y)
    again = _run(name, torch_mlp, x, y, norm)
    np.testing.assert_array_equal(result.x_adv, again.x_adv)


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "square"])
def test_attack_on_torch_cnn_images(name, torch_cnn, digits) -> None:
    x, y = digits[0][:40].reshape(-1, 1, 8, 8), digits[1][:40]
    extra = {"max_queries": 300} if name == "square" else {}
    result = _run(name, torch_cnn, x, y, "inf", **extra)
    _assert_inside(x, result, 0.1, "inf")
    assert accuracy(torch_cnn, result.x_adv, y) < accuracy(torch_cnn, x, y) - 0.2


def test_black_box_attacks_on_scikit_learn_count_queries(sklearn_digits, digits) -> None:
    x, y = digits[0][:40], digits[1][:40]
    for name, budget in (("square", 100), ("hopskipjump", 200)):
        function, _ = evasion.ATTACKS[name]
        result = function(sklearn_digits, x, y, eps=2.0, norm="2", max_queries=budget, seed=0)
        _assert_inside(x, result, 2.0, "2")
        assert result.success.mean() > 0.3
        assert result.queries is not None and result.queries.max() <= budget
        assert (result.queries >= 1).all()


def test_seeds_change_random_attacks(torch_mlp, digits) -> None:
    x, y = digits[0][:30], digits[1][:30]
    first = _run("square", torch_mlp, x, y, "inf", seed=1)
    second = _run("square", torch_mlp, x, y, "inf", seed=2)
    assert not np.array_equal(first.x_adv, second.x_adv)


def test_tabular_ranges_and_immutable_features_hold(cancer) -> None:
    x, y, clf = cancer
    x, y = x[:80], y[:80]
    ranges = {0: (0.2, 0.9), 5: (0.0, 0.5)}
    inside = np.clip(x, 0.0, 1.0)
    inside[:, 0] = np.clip(inside[:, 0], 0.2, 0.9)
    inside[:, 5] = np.clip(inside[:, 5], 0.0, 0.5)
    constraints = Constraints.build((30,), (0.0, 1.0), feature_ranges=ranges, immutable=[1, 2])
    result = evasion.square(
        clf, inside, y, eps=0.2, norm="inf", max_queries=200, constraints=constraints, seed=0
    )
    assert result.success.any()
    np.testing.assert_array_equal(result.x_adv[:, [1, 2]], inside[:, [1, 2]])
    assert result.x_adv[:, 0].min() >= 0.2 and result.x_adv[:, 0].max() <= 0.9
    assert result.x_adv[:, 5].max() <= 0.5
    assert perturbation_norms(inside, result.x_adv, "inf").max() <= 0.2


def test_immutable_features_hold_for_gradient_attacks(torch_mlp, digits) -> None:
    x, y = digits[0][:40], digits[1][:40]
    frozen = list(range(0, 64, 2))
    constraints = Constraints.build((64,), (0.0, 1.0), immutable=frozen)
    result = evasion.pgd(torch_mlp, x, y, eps=0.2, steps=10, constraints=constraints)
    np.testing.assert_array_equal(result.x_adv[:, frozen], x[:, frozen])
    assert result.success.any()


def test_projection_is_exact_for_awkward_floats() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(500, 37)).astype(np.float32)
    far = rng.normal(0, 3, size=x.shape)
    for norm, eps in (("inf", 0.0301), ("2", 0.7003)):
        constraints = Constraints.build((37,), (0.0, 1.0))
        out = project(x, far, eps, norm, constraints)
        assert out.dtype == np.float32
        assert perturbation_norms(x, out, norm).max() <= eps
        assert out.min() >= 0.0 and out.max() <= 1.0


def test_apgd_checkpoints_follow_the_paper() -> None:
    assert sorted(apgd_checkpoints(100)) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_white_box_attack_on_gradient_free_model_proposes_black_box(sklearn_digits, digits):
    x, y = digits[0][:5], digits[1][:5]
    with pytest.raises(UsageError, match="square"):
        evasion.pgd(sklearn_digits, x, y, eps=0.1)


def test_bad_inputs_are_one_clear_error(torch_mlp, digits) -> None:
    x, y = digits[0][:5], digits[1][:5]
    with pytest.raises(UsageError, match="epsilon must be a positive number"):
        evasion.fgsm(torch_mlp, x, y, eps=0)
    with pytest.raises(UsageError, match="unknown norm"):
        evasion.fgsm(torch_mlp, x, y, eps=0.1, norm="1")
    with pytest.raises(InputError, match="labels must be class indices"):
        evasion.fgsm(torch_mlp, x, y + 10, eps=0.1)
    with pytest.raises(InputError, match="expects"):
        evasion.fgsm(torch_mlp, x[:, :10], y, eps=0.1)
    with pytest.raises(InputError, match="outside the valid range"):
        evasion.fgsm(torch_mlp, x * 3, y, eps=0.1)
