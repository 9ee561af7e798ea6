"""evaluate_robustness: the AutoAttack-style sequence, the robustness curve, and the
gradient-masking checks on a model that really masks its gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.assess.evasion import EvasionPolicy, evaluate_robustness
from bastion.assess.evasion.robustness import EpsResult, RobustnessResult, findings
from bastion.errors import UsageError
from bastion.findings import Location, Severity
from bastion.models.torch_classifier import TorchClassifier


class Quantised(nn.Module):
    """Rounds its input before the real model: zero gradients everywhere (gradient masking)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


@pytest.fixture(scope="module")
def held_out(digits):
    x, y = digits
    return x[1000:1150], y[1000:1150]


def test_curve_falls_with_eps_and_sequence_only_attacks_survivors(torch_mlp, held_out) -> None:
    x, y = held_out
    result = evaluate_robustness(
        torch_mlp, x, y, [0.1, 0.02, 0.05], seed=0, steps=15, budget=100
    )
    assert [p.eps for p in result.curve] == [0.02, 0.05, 0.1]
    accuracies = [p.robust_accuracy for p in result.curve]
    assert accuracies == sorted(accuracies, reverse=True)
    assert accuracies[-1] < result.clean_accuracy - 0.3
    for point in result.curve:
        stages = point.stages
        assert [s.attack for s in stages] == ["apgd-ce", "apgd-t", "fab-t", "square"]
        before = round(result.clean_accuracy * len(x))
        assert before - sum(s.fooled for s in stages) == round(point.robust_accuracy * len(x))
        assert stages[-1].robust_accuracy == point.robust_accuracy
    assert result.unbounded_accuracy == 0.0
    rule_ids = [f.rule_id for f in result.findings]
    assert rule_ids == ["BST-EVA-001"]
    assert result.findings[0].severity == Severity.LOW  # 0.02 is the declared (smallest) eps
    metrics = result.metrics()
    assert metrics["robust_accuracy"]["0.1"] == pytest.approx(accuracies[-1])
    again = evaluate_robustness(torch_mlp, x, y, [0.02, 0.05, 0.1], seed=0, steps=15, budget=100)
    assert [p.robust_accuracy for p in again.curve] == accuracies


def test_policy_sets_the_severity_at_the_declared_eps(torch_mlp, held_out) -> None:
    x, y = held_out
    policy = EvasionPolicy(declared_eps=0.1, high_below=0.9)
    result = evaluate_robustness(
        torch_mlp, x, y, [0.1], attacks="pgd", seed=0, steps=10, policy=policy
    )
    finding = result.findings[0]
    assert finding.severity == Severity.HIGH and finding.evidence["eps"] == 0.1
    assert finding.references == ("ML01", "AML.T0015", "AML.T0043")
    assert "pgd_training" in finding.remediation and "bastion assess evasion" in finding.remediation


def test_gradient_masking_is_reported_not_hidden(torch_mlp, held_out) -> None:
    x, y = held_out
    masked = TorchClassifier(Quantised(torch_mlp.module), input_shape=(64,), clip_values=(0, 1))
    result = evaluate_robustness(masked, x, y, [0.1], seed=0, steps=10, budget=200)
    ids = {f.rule_id for f in result.findings}
    assert {"BST-EVA-003", "BST-EVA-004"} <= ids
    assert result.unbounded_accuracy > 0.5
    assert result.curve[0].black_box_only > 0
    assert all(f.severity == Severity.HIGH for f in result.findings if f.rule_id != "BST-EVA-001")


def test_rising_robust_accuracy_is_flagged() -> None:
    curve = [EpsResult(0.01, 0.5, (), 0), EpsResult(0.03, 0.7, (), 0)]
    result = RobustnessResult("inf", 100, 0.9, curve, 1.0, 0.0, ("pgd",), 0, 1.0)
    found = findings(result, EvasionPolicy(), Location("m.pt"))
    assert [f.rule_id for f in found] == ["BST-EVA-001", "BST-EVA-002"]
    assert found[1].evidence["robust_accuracy"] == [0.5, 0.7]


def test_black_box_models_get_black_box_attacks(sklearn_digits, held_out) -> None:
    x, y = held_out
    result = evaluate_robustness(sklearn_digits, x[:40], y[:40], [0.2], seed=1, budget=100)
    assert result.attacks == ("square",)
    assert result.curve[0].robust_accuracy < result.clean_accuracy
    with pytest.raises(UsageError, match="use a black-box attack: --attacks square"):
        evaluate_robustness(sklearn_digits, x, y, [0.1], attacks="pgd,square")


def test_bad_arguments(torch_mlp, held_out) -> None:
    x, y = held_out
    with pytest.raises(UsageError, match="epsilon must be a positive number"):
        evaluate_robustness(torch_mlp, x, y, [0.1, -0.1])
    with pytest.raises(UsageError, match="unknown attack 'cw'"):
        evaluate_robustness(torch_mlp, x, y, [0.1], attacks="pgd,cw")
    with pytest.raises(UsageError, match="give at least one epsilon"):
        evaluate_robustness(torch_mlp, x, y, [])
