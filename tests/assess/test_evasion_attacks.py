"""Each attack lowers accuracy, stays exactly inside its norm ball and the valid range, and
gives the same result from the same seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bastion.assess import evasion
from bastion.assess.evasion import Constraints, perturbation_norms, project
from bastion.errors import InputError, UsageError
from bastion.models.classifier import accuracy
from bastion.models.torch_attacks import Box, apgd_checkpoints, hyperplane_step

FAST = {
    "fgsm": {},
    "pgd": {"steps": 10, "restarts": 2},
    "apgd-ce": {"steps": 10},
    "apgd-dlr": {"steps": 10},
    "apgd-t": {"steps": 10, "n_targets": 2},
    "fab-t": {"steps": 10, "n_targets": 2, "restarts": 2},
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


@pytest.mark.parametrize("name", ["pgd", "apgd-ce", "fab-t", "square"])
def test_attack_on_torch_cnn_images(name, torch_cnn, digits) -> None:
    x, y = digits[0][:40].reshape(-1, 1, 8, 8), digits[1][:40]
    extra = {"max_queries": 300} if name == "square" else {}
    result = _run(name, torch_cnn, x, y, "inf", **extra)
    _assert_inside(x, result, 0.1, "inf")
    assert accuracy(torch_cnn, result.x_adv, y) < accuracy(torch_cnn, x, y) - 0.2


def test_gradient_attacks_leave_the_module_as_they_found_it(torch_cnn, digits) -> None:
    """The attack freezes the parameters and stores kernels channels-last only while it runs."""
    module = torch_cnn.module
    before = {name: (p.stride(), p.requires_grad, p.detach().clone())
              for name, p in module.named_parameters()}
    x, y = digits[0][:20].reshape(-1, 1, 8, 8), digits[1][:20]
    evasion.fab_targeted(torch_cnn, x, y, eps=0.1, steps=3, n_targets=1)
    evasion.pgd(torch_cnn, x, y, eps=0.1, steps=3)
    for name, parameter in module.named_parameters():
        stride, requires_grad, values = before[name]
        assert parameter.stride() == stride and parameter.requires_grad == requires_grad
        assert torch.equal(parameter.detach(), values)
    assert not any(m._forward_hooks for m in module.modules())


def test_one_channel_images_run_channels_last_from_the_first_convolution(torch_cnn, digits):
    """A one-channel batch reads as both layouts; the attack views it with channels-last
    strides so the first convolution's output is already channels-last (else every pass
    converts it for the next layer, forward and backward)."""
    first = next(m for m in torch_cnn.module.modules() if isinstance(m, torch.nn.Conv2d))
    layouts = []

    def record(_module, _inputs, out) -> None:
        if torch.is_grad_enabled():  # the attack's passes: the ones taking gradients
            layouts.append(out.stride(1) == 1)

    hook = first.register_forward_hook(record)
    try:
        x, y = digits[0][:20].reshape(-1, 1, 8, 8), digits[1][:20]
        evasion.pgd(torch_cnn, x, y, eps=0.1, steps=3)
    finally:
        hook.remove()
    assert len(layouts) == 3 and all(layouts)


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


@pytest.mark.parametrize("name", ["pgd", "fab-t"])
def test_immutable_features_hold_for_gradient_attacks(name, torch_mlp, digits) -> None:
    x, y = digits[0][:40], digits[1][:40]
    frozen = list(range(0, 64, 2))
    constraints = Constraints.build((64,), (0.0, 1.0), immutable=frozen)
    function, _ = evasion.ATTACKS[name]
    result = function(torch_mlp, x, y, eps=0.2, steps=10, constraints=constraints)
    np.testing.assert_array_equal(result.x_adv[:, frozen], x[:, frozen])
    assert result.success.any()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_respects_per_feature_ranges_and_immutable_features(norm, torch_mlp, digits):
    x, y = digits[0][:40].copy(), digits[1][:40]
    x[:, 10] = np.clip(x[:, 10], 0.25, 0.625)  # bounds exact in float32
    x[:, 20] = np.clip(x[:, 20], 0.0, 0.375)
    constraints = Constraints.build(
        (64,), (0.0, 1.0), feature_ranges={10: (0.25, 0.625), 20: (0.0, 0.375)},
        immutable=[5, 6],
    )
    eps = EPS[norm] * 2
    result = evasion.fab_targeted(torch_mlp, x, y, eps=eps, norm=norm, steps=10, n_targets=3,
                                  constraints=constraints, seed=0)
    assert result.success.mean() > 0.3
    np.testing.assert_array_equal(result.x_adv[:, [5, 6]], x[:, [5, 6]])
    assert result.x_adv[:, 10].min() >= 0.25 and result.x_adv[:, 10].max() <= 0.625
    assert result.x_adv[:, 20].max() <= 0.375
    _assert_inside(x, result, eps, norm)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_projection_is_the_least_norm_step_onto_the_hyperplane_in_the_box(norm) -> None:
    """Checked against scipy's solvers: a linear program for Linf, a quadratic one for L2."""
    from scipy.optimize import linprog, minimize

    generator = torch.Generator().manual_seed(0)
    w = torch.randn(12, 6, generator=generator, dtype=torch.float64)
    w[:, 0] = 0.0  # a feature the boundary does not depend on must not move
    x = torch.rand(12, 6, generator=generator, dtype=torch.float64)
    need = 0.3 * torch.randn(12, generator=generator, dtype=torch.float64)
    step = hyperplane_step(w, need, 1 - x, x, norm)
    assert ((step <= 1 - x + 1e-12) & (step >= -x - 1e-12)).all()
    assert (step[:, 0] == 0).all()
    for row in range(12):
        wi, lo, hi, b = w[row].numpy(), -x[row].numpy(), (1 - x[row]).numpy(), float(need[row])
        if norm == "inf":  # minimise t with -t <= d <= t, w.d = b, d in the box
            eye = np.eye(6)
            solved = linprog(
                np.r_[np.zeros(6), 1.0],
                A_ub=np.block([[eye, -np.ones((6, 1))], [-eye, -np.ones((6, 1))]]),
                b_ub=np.zeros(12), A_eq=np.r_[wi, 0.0][None], b_eq=[b],
                bounds=[*zip(lo, hi, strict=True), (0, None)],
            )
            best = solved.fun
        else:
            feasible = np.clip(b * wi / (wi @ wi), lo, hi)  # a start near the plane
            solved = minimize(
                lambda d: d @ d, feasible, jac=lambda d: 2 * d, method="SLSQP",
                bounds=list(zip(lo, hi, strict=True)), options={"ftol": 1e-14},
                constraints=[{"type": "eq", "fun": lambda d, wi=wi, b=b: wi @ d - b}],
            )
            best = float(np.sqrt(solved.fun))
        assert solved.success
        assert float(w[row] @ step[row]) == pytest.approx(b, abs=1e-9)
        ours = float(step[row].abs().max() if norm == "inf" else step[row].norm())
        assert ours == pytest.approx(best, abs=1e-6)


def test_fab_projection_saturates_the_box_when_the_hyperplane_is_out_of_reach() -> None:
    w = torch.tensor([[1.0, -2.0, 0.0]])
    x = torch.tensor([[0.5, 0.5, 0.5]])
    step = hyperplane_step(w, torch.tensor([10.0]), 1 - x, x, "2")
    torch.testing.assert_close(step, torch.tensor([[0.5, -0.5, 0.0]]))


def _plain_pgd(module, x, y, eps, step, steps):
    """PGD as the textbook writes it, every point stepped every time (torch's own
    cross-entropy); per point its first misclassified iterate, else its last one. Also the
    rows a PGD that stops points early must still pass through the model: per step, the
    points not yet fooled and whose iterates have not yet repeated (a step back to the point
    of one or two steps before), and what stopping on one-step repeats only would pass."""
    x0 = torch.tensor(x)
    labels = torch.tensor(y)
    low, high = (x0 - eps).clamp_min(0.0), (x0 + eps).clamp_max(1.0)
    current, result = x0.clone(), x0.clone()
    done = torch.zeros(len(x0), dtype=torch.bool)
    ended = torch.zeros(len(x0), dtype=torch.bool)
    settled = torch.zeros(len(x0), dtype=torch.bool)  # fooled or at a fixed point
    before, needed, without_cycles = None, 0, 0
    for _ in range(steps):
        needed += int((~ended).sum())
        without_cycles += int((~settled).sum())
        current.requires_grad_(True)
        logits = module(current)
        fooled = (logits.argmax(1) != labels) & ~done
        result[fooled], done = current.detach()[fooled], done | fooled
        (grad,) = torch.autograd.grad(
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), current
        )
        previous = current.detach()
        current = torch.clamp(previous + step * grad.sign(), low, high)
        fixed = (current == previous).flatten(1).all(1)
        back = torch.zeros_like(fixed) if before is None else (current == before).flatten(1).all(1)
        ended |= done | fixed | back
        settled |= done | fixed
        before = previous
    result[~done] = current[~done]
    with torch.no_grad():
        fooled_at_end = module(current).argmax(1) != labels
    return result.numpy(), (done | fooled_at_end).numpy(), needed, without_cycles


@pytest.mark.parametrize(("eps", "step", "steps"), [(0.05, 0.05, 10), (0.05, 0.02, 21)])
def test_pgd_early_stops_lose_nothing_against_plain_pgd(eps, step, steps, torch_mlp, digits):
    """Points that are fooled, and points whose iterates repeat (a corner of the box they
    keep being pushed into, or a two-step cycle of flipping gradient signs; an odd and an
    even number of steps left), stop early; the result is still exactly the plain loop's,
    and the model saw about the rows still going (each pass's batch rounds the gradient's
    near-zero coordinates its own way, so a point may reach its cycle a step apart)."""
    x, y = digits[0][:100], digits[1][:100]
    rows_seen = []

    def count(_module, _inputs, out) -> None:
        if torch.is_grad_enabled():  # the attack's passes: the ones taking gradients
            rows_seen.append(len(out))

    hook = torch_mlp.module.register_forward_hook(count)
    try:
        result = evasion.pgd(torch_mlp, x, y, eps=eps, steps=steps, step_size=step,
                             random_start=False)
    finally:
        hook.remove()
    expected, fooled, needed, without_cycles = _plain_pgd(
        torch_mlp.module, x, y, eps, step, steps
    )
    np.testing.assert_allclose(result.x_adv, expected, atol=1e-6)
    np.testing.assert_array_equal(result.success, fooled)
    assert 0 < fooled.sum() < len(y)
    assert abs(sum(rows_seen) - needed) <= 0.01 * needed + 2
    assert sum(rows_seen) < (needed + without_cycles) / 2  # two-step cycles do stop
    assert needed < 0.6 * len(y) * steps  # 345 and 616 when written


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


def test_linf_box_bounds_are_the_nearest_floats_inside_the_exact_ball() -> None:
    """The attack clamps to float32 bounds no farther from x than eps exactly, and no nearer
    than they need be: a point on them is where the exact projection would put it, so the
    attack's own verdict on it stands."""
    rng = np.random.default_rng(0)
    x = torch.tensor(rng.uniform(0, 1, size=(400, 37)).astype(np.float32))
    eps = 0.0301
    box = Box(x, torch.tensor(0.0), torch.tensor(1.0), None, eps, "inf")
    clean = x.double()
    for bound, outward in ((box.floor, -np.inf), (box.ceiling, np.inf)):
        distance = (bound.double() - clean).abs()
        assert (distance <= eps).all()
        inside = (bound > 0) & (bound < 1)  # not clipped by the valid range
        further = torch.nextafter(bound, torch.tensor(outward, dtype=torch.float32))
        assert ((further.double() - clean).abs()[inside] > eps).all()
    assert ((box.floor.double() - clean).abs() == eps).sum() < x.numel()  # eps is no float32
    raw = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5,
                      box.floor, box.ceiling).numpy()
    constraints = Constraints.build((37,), (0.0, 1.0))
    np.testing.assert_array_equal(project(x.numpy(), raw, eps, "inf", constraints), raw)


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
