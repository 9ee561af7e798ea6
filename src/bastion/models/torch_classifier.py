"""The torch adapter: any `nn.Module` returning logits, as a `WhiteBoxClassifier`.

Inputs stay on the module's device for a whole batch; only results come back to numpy.
Preprocessing (normalisation, say) is part of the differentiated function, so gradients are
taken with respect to the raw inputs that attacks perturb and clip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn

from bastion.errors import InputError
from bastion.models.classifier import ClipValues

Preprocess = Callable[[torch.Tensor], torch.Tensor]


class TorchClassifier:
    """Wraps a module whose forward returns logits of shape (n, n_classes)."""

    def __init__(
        self,
        module: nn.Module,
        *,
        input_shape: tuple[int, ...],
        n_classes: int | None = None,
        clip_values: ClipValues | None = None,
        preprocess: Preprocess | None = None,
        device: str | torch.device | None = None,
        batch_size: int = 512,
        feature_layer: nn.Module | None = None,
    ) -> None:
        self.device = torch.device(device) if device else _module_device(module)
        self.module = module.to(self.device).eval()
        self.input_shape = tuple(input_shape)
        self.clip_values = clip_values
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.n_classes = n_classes or self._probe_classes()
        self._feature_layer = feature_layer or _last_linear(module)

    def _probe_classes(self) -> int:
        with torch.no_grad():
            probe = torch.zeros((1, *self.input_shape), device=self.device)
            return int(self.logits(probe).shape[1])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a tensor already on the device; differentiable."""
        return self.module(self.preprocess(x) if self.preprocess else x)

    def to_tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)

    def _chunks(self, x: np.ndarray) -> Iterator[torch.Tensor]:
        for start in range(0, len(x), self.batch_size):
            yield self.to_tensor(x[start : start + self.batch_size])

    def predict_logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            parts = [self.logits(chunk).float().cpu().numpy() for chunk in self._chunks(x)]
        return np.concatenate(parts) if parts else np.zeros((0, self.n_classes), np.float32)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        logits = self.predict_logits(x).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def loss_gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Gradient of the summed cross-entropy with respect to each input."""
        grads = []
        labels = torch.as_tensor(np.asarray(y), dtype=torch.long, device=self.device)
        for start, chunk in zip(range(0, len(x), self.batch_size), self._chunks(x), strict=True):
            chunk.requires_grad_(True)
            target = labels[start : start + len(chunk)]
            with torch.enable_grad():
                loss = nn.functional.cross_entropy(self.logits(chunk), target, reduction="sum")
                (grad,) = torch.autograd.grad(loss, chunk)
            grads.append(grad.cpu().numpy())
        return np.concatenate(grads) if grads else np.zeros_like(np.asarray(x, np.float32))

    def features(self, x: np.ndarray) -> np.ndarray:
        """The input of the last linear layer (the penultimate activations), flattened."""
        if self._feature_layer is None:
            raise InputError(
                f"{type(self.module).__name__} has no nn.Linear layer; pass feature_layer= "
                "to name the layer whose input is the feature space"
            )
        captured: list[torch.Tensor] = []
        hook = self._feature_layer.register_forward_hook(
            lambda _m, inputs, _out: captured.append(inputs[0].detach().flatten(1).cpu())
        )
        try:
            self.predict_logits(x)
        finally:
            hook.remove()
        return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def _module_device(module: nn.Module) -> torch.device:
    first = next(module.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _last_linear(module: nn.Module) -> nn.Module | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None
