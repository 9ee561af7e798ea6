"""Differentially private training (DP-SGD) of a torch classifier through Opacus, in one call.

`train_private(module, x, y, target_epsilon=1.0)` clips each example's gradient to
`max_grad_norm`, adds Gaussian noise calibrated by Opacus's accountant so that the whole
run is (epsilon, delta)-DP, and returns the trained module together with the epsilon spent.
The guarantee is recorded on the module as `module.bastion_privacy` (a JSON-safe dict) and,
with `write_privacy_metadata`, in a sidecar file `<model>.privacy.json` for the model card.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bastion.errors import InputError, UsageError
from bastion.fsutil import atomic_write

METADATA_ATTRIBUTE = "bastion_privacy"
SIDECAR_SUFFIX = ".privacy.json"


@dataclass(frozen=True)
class PrivacyGuarantee:
    """What the model card states: the (epsilon, delta) spent and how it was obtained."""

    mechanism: str
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epochs: int
    records: int
    accountant: str
    library: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PrivateTrainingResult:
    module: nn.Module
    guarantee: PrivacyGuarantee

    @property
    def epsilon(self) -> float:
        return self.guarantee.epsilon


def train_private(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float | None = None,
    max_grad_norm: float = 1.0,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.1,
    optimizer: str = "sgd",
    accountant: str = "prv",
    seed: int = 0,
) -> PrivateTrainingResult:
    """Train `module` on (x, y) with DP-SGD; give `target_epsilon` or `noise_multiplier`.

    `delta` defaults to min(1e-5, 1 / (10 n)), below 1/n as DP requires. Batches are drawn
    by Poisson sampling with rate batch_size / n, as the accountant assumes.
    """
    if (target_epsilon is None) == (noise_multiplier is None):
        raise UsageError("give exactly one of target_epsilon and noise_multiplier")
    if target_epsilon is not None and target_epsilon <= 0:
        raise UsageError(f"target_epsilon must be positive, got {target_epsilon}")
    if max_grad_norm <= 0 or epochs < 1 or batch_size < 1:
        raise UsageError("max_grad_norm must be positive, epochs and batch_size at least 1")
    features, labels = _tensors(x, y)
    n = len(features)
    delta = delta if delta is not None else min(1e-5, 1.0 / (10 * n))
    if not 0 < delta < 1:
        raise UsageError(f"delta must be in (0, 1), got {delta}")
    _check_supported(module)

    from opacus import PrivacyEngine

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels),
        batch_size=min(batch_size, n),
        generator=generator,
    )
    options = dict(
        module=module.train(),
        optimizer=_optimizer(optimizer, module, lr),
        data_loader=loader,
        max_grad_norm=max_grad_norm,
        noise_generator=generator,
    )
    with warnings.catch_warnings():
        # Opacus's advice on secure RNG, RDP orders and input gradients does not apply here.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant=accountant)
        if target_epsilon is not None:
            private, dp_optimizer, dp_loader = engine.make_private_with_epsilon(
                target_epsilon=target_epsilon, target_delta=delta, epochs=epochs, **options
            )
        else:
            private, dp_optimizer, dp_loader = engine.make_private(
                noise_multiplier=noise_multiplier, **options
            )
        steps = _run_epochs(private, dp_optimizer, dp_loader, epochs)
        spent = float(engine.get_epsilon(delta))
    trained = _unwrap(private).eval()
    guarantee = PrivacyGuarantee(
        mechanism="DP-SGD (per-example clipping, Gaussian noise, Poisson sampling)",
        epsilon=spent,
        delta=delta,
        noise_multiplier=float(dp_optimizer.noise_multiplier),
        max_grad_norm=max_grad_norm,
        sample_rate=float(dp_optimizer.expected_batch_size / n),
        steps=steps,
        epochs=epochs,
        records=n,
        accountant=accountant,
        library=f"opacus {_opacus_version()}",
    )
    setattr(trained, METADATA_ATTRIBUTE, guarantee.to_json())
    return PrivateTrainingResult(trained, guarantee)


def write_privacy_metadata(
    result: PrivateTrainingResult, model_path: str | os.PathLike[str]
) -> Path:
    """Write `<model_path>.privacy.json` beside the saved model, for the model card."""
    sidecar = Path(str(model_path) + SIDECAR_SUFFIX)
    document = {"model": Path(model_path).name, "privacy": result.guarantee.to_json()}
    return atomic_write(sidecar, json.dumps(document, indent=2) + "\n")


def read_privacy_metadata(model_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The guarantee recorded beside a model, or None when it was not trained privately."""
    sidecar = Path(str(model_path) + SIDECAR_SUFFIX)
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))["privacy"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{sidecar}: not a Bastion privacy record ({exc})") from None


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
        raise InputError(f"need inputs of shape (n, ...) and n labels; got {x.shape} and {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise InputError("labels must be class indices 0..k-1")
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)


def _check_supported(module: nn.Module) -> None:
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(module, strict=False)
    if problems:
        first = str(problems[0]).strip().splitlines()[0]
        raise UsageError(
            f"{type(module).__name__} has layers DP-SGD cannot train ({len(problems)}; first: "
            f"{first}); replace BatchNorm with GroupNorm, e.g. with "
            "opacus.validators.ModuleValidator.fix(module)"
        )


def _optimizer(name: str, module: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(module.parameters(), lr=lr, momentum=0.9)
    if name == "adam":
        return torch.optim.Adam(module.parameters(), lr=lr)
    raise UsageError(f"unknown optimizer {name!r} (expected sgd or adam)")


def _run_epochs(module: nn.Module, optimizer, loader, epochs: int) -> int:
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    for _ in range(epochs):
        for xb, yb in loader:
            optimizer.zero_grad(set_to_none=True)
            if len(xb):  # Poisson sampling can draw an empty batch; it still counts
                loss_fn(module(xb), yb).backward()
            optimizer.step()
            steps += 1
    return steps


def _unwrap(private: nn.Module) -> nn.Module:
    """The user's module without Opacus's per-example gradient hooks and buffers."""
    inner = getattr(private, "_module", private)
    if hasattr(private, "remove_hooks"):
        private.remove_hooks()
    for parameter in inner.parameters():
        parameter.grad_sample = None
        parameter.grad = None
    return inner


def _opacus_version() -> str:
    import opacus

    return opacus.__version__
