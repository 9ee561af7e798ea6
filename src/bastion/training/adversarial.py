"""Adversarial training for torch models, one call each:

- `pgd_training`: Madry et al. 2018, train on the PGD adversarial example of every batch;
- `trades_training`: Zhang et al. 2019 (TRADES), cross-entropy on clean inputs plus beta
  times the KL divergence between the clean and the adversarial prediction, the adversarial
  input found by PGD on that KL term.

Both train the module in place and return it; inputs are numpy arrays, labels class indices,
and the run is reproducible from `seed`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from bastion.assess.evasion.constraints import check_eps, parse_norm
from bastion.errors import InputError
from bastion.models.torch_attacks import Box, input_gradients_only

Preprocess = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Setup:
    module: nn.Module
    preprocess: Preprocess | None
    lower: torch.Tensor
    upper: torch.Tensor
    eps: float
    norm: str
    steps: int
    step_size: float
    generator: torch.Generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.preprocess(x) if self.preprocess else x)


def pgd_training(
    module: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    epochs: int = 10, batch_size: int = 128, lr: float = 1e-3, steps: int = 7,
    step_size: float | None = None, clip_values: tuple[float, float] = (0.0, 1.0),
    preprocess: Preprocess | None = None, seed: int = 0,
) -> nn.Module:
    """Madry adversarial training: minimise the cross-entropy on PGD examples."""

    def batch_loss(setup: _Setup, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        box = _box(setup, inputs)
        start = box.random_start(setup.generator)
        adversarial = _maximise(
            setup, box, start,
            lambda logits: functional.cross_entropy(logits, labels, reduction="sum"),
        )
        return functional.cross_entropy(setup.forward(adversarial), labels)

    return _train(module, x, y, batch_loss, eps, norm, epochs, batch_size, lr, steps,
                  step_size, clip_values, preprocess, seed)


def trades_training(
    module: nn.Module, x: np.ndarray, y: np.ndarray, *, eps: float, norm: str = "inf",
    beta: float = 6.0, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
    steps: int = 7, step_size: float | None = None,
    clip_values: tuple[float, float] = (0.0, 1.0), preprocess: Preprocess | None = None,
    seed: int = 0,
) -> nn.Module:
    """TRADES: clean cross-entropy + beta * KL(clean prediction || adversarial prediction)."""

    def batch_loss(setup: _Setup, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        box = _box(setup, inputs)
        with torch.no_grad():
            clean_probs = functional.softmax(setup.forward(inputs), dim=1)
        noise = 0.001 * torch.randn(inputs.shape, generator=setup.generator, device=inputs.device)
        start = box.project(inputs + noise)
        adversarial = _maximise(setup, box, start, lambda logits: _kl(clean_probs, logits))
        logits = setup.forward(inputs)
        robust = _kl(functional.softmax(logits, dim=1), setup.forward(adversarial)) / len(inputs)
        return functional.cross_entropy(logits, labels) + beta * robust

    return _train(module, x, y, batch_loss, eps, norm, epochs, batch_size, lr, steps,
                  step_size, clip_values, preprocess, seed)


def _kl(clean_probs: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """Summed KL(clean || adversarial)."""
    return functional.kl_div(
        functional.log_softmax(adversarial_logits, dim=1), clean_probs, reduction="sum"
    )


def _box(setup: _Setup, inputs: torch.Tensor) -> Box:
    return Box(inputs, setup.lower, setup.upper, None, setup.eps, setup.norm)


def _maximise(
    setup: _Setup, box: Box, start: torch.Tensor, loss: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """PGD ascent on `loss` from `start`, with the module in eval mode and its parameters
    frozen (only the input gradient is needed); back to train mode afterwards."""
    setup.module.eval()
    x_adv = start.detach()
    with input_gradients_only(setup.module):
        for _ in range(setup.steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(setup.forward(x_adv)), x_adv)
            with torch.no_grad():
                x_adv = box.project(x_adv + setup.step_size * box.direction(grad))
    setup.module.train()
    return x_adv.detach()


def _train(
    module: nn.Module, x: np.ndarray, y: np.ndarray,
    batch_loss: Callable[[_Setup, torch.Tensor, torch.Tensor], torch.Tensor],
    eps: float, norm: str, epochs: int, batch_size: int, lr: float, steps: int,
    step_size: float | None, clip_values: tuple[float, float], preprocess: Preprocess | None,
    seed: int,
) -> nn.Module:
    x, y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    if len(x) != len(y) or len(x) == 0:
        raise InputError(f"need as many labels as inputs (got {len(x)} inputs, {len(y)} labels)")
    eps, norm = check_eps(eps), parse_norm(norm)
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    shuffle = torch.Generator().manual_seed(seed)
    setup = _Setup(
        module=module, preprocess=preprocess,
        lower=torch.tensor(float(clip_values[0]), device=device),
        upper=torch.tensor(float(clip_values[1]), device=device),
        eps=eps, norm=norm, steps=steps,
        step_size=step_size or 2.5 * eps / steps, generator=generator,
    )
    inputs = torch.as_tensor(x, device=device)
    labels = torch.as_tensor(y, device=device)
    optimiser = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs), generator=shuffle).to(device)
        for start in range(0, len(inputs), batch_size):
            chosen = order[start : start + batch_size]
            loss = batch_loss(setup, inputs[chosen], labels[chosen])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return module.eval()
