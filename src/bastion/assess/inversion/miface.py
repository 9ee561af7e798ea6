"""Class representatives by gradient descent on the input (MIFace, Fredrikson et al. 2015).

Starting from a neutral input, descend the model's cross-entropy for class c until the
model is confident the input is a c. When the model memorised what its classes look like,
the result resembles the class's training data; with data to compare against, Bastion
measures that resemblance instead of leaving it to the eye.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bastion.models.classifier import Classifier, require_white_box


@dataclass(frozen=True)
class Reconstructions:
    images: np.ndarray  # (classes, *input_shape)
    classes: np.ndarray  # class index of each reconstruction
    confidence: np.ndarray  # the model's probability of that class for it
    # With data: cosine similarity of each reconstruction (minus the data mean) to its own
    # class mean and to the nearest other class mean; a reconstruction "identifies" its
    # class when it is closer to its own class mean than to any other.
    similarity_own: np.ndarray | None = None
    similarity_other: np.ndarray | None = None

    @property
    def identified(self) -> np.ndarray | None:
        if self.similarity_own is None:
            return None
        return self.similarity_own > self.similarity_other


def reconstruct_classes(
    classifier: Classifier,
    *,
    classes: np.ndarray | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    steps: int = 300,
    step_size: float = 0.02,
    stop_at: float = 0.99,
) -> Reconstructions:
    """One reconstruction per class (all classes by default) by normalised gradient steps.

    Inputs stay in the model's clip range (or the data's range). `step_size` is a fraction
    of that range per step. With `x`, `y`, reconstructions start from the data mean and are
    compared with the class means.
    """
    model = require_white_box(
        classifier,
        "class representative reconstruction (MIFace)",
        instead="attribute inference (--sensitive COLUMN), which only queries the model",
    )
    targets = np.arange(model.n_classes) if classes is None else np.asarray(classes, np.int64)
    shape = tuple(model.input_shape or (x.shape[1:] if x is not None else ()))
    low, high = _bounds(model, x)
    start = x.mean(axis=0) if x is not None else np.full(shape, (low + high) / 2.0)
    images = np.repeat(start[None].astype(np.float32), len(targets), axis=0)
    step = step_size * (high - low)
    for _ in range(steps):
        confidence = _confidence(model, images, targets)
        if confidence.min() >= stop_at:
            break
        grad = model.loss_gradient(images, targets)
        scale = np.abs(grad).reshape(len(grad), -1).mean(axis=1) + 1e-12
        active = (confidence < stop_at).astype(np.float32)  # confident ones stay put
        factor = (active * step / scale).reshape(-1, *([1] * (grad.ndim - 1)))
        images = np.clip(images - factor * grad, low, high).astype(np.float32)
    confidence = _confidence(model, images, targets)
    if x is None or y is None:
        return Reconstructions(images, targets, confidence)
    own, other = _resemblance(images, targets, x, y)
    return Reconstructions(images, targets, confidence, own, other)


def _bounds(model: Classifier, x: np.ndarray | None) -> tuple[float, float]:
    if model.clip_values is not None:
        return float(model.clip_values[0]), float(model.clip_values[1])
    if x is not None:
        return float(x.min()), float(x.max())
    return 0.0, 1.0


def _confidence(model: Classifier, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return model.predict_proba(images)[np.arange(len(targets)), targets]


def _resemblance(
    images: np.ndarray, targets: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(len(x), -1).astype(np.float64)
    centre = flat.mean(axis=0)
    present = np.unique(y)
    means = np.stack([flat[y == c].mean(axis=0) for c in present]) - centre
    recon = images.reshape(len(images), -1).astype(np.float64) - centre
    cosine = _normalise(recon) @ _normalise(means).T  # (reconstructions, classes present)
    own = np.full(len(targets), -1.0)
    other = np.full(len(targets), -1.0)
    for row, target in enumerate(targets):
        mine = present == target
        if mine.any():
            own[row] = cosine[row, mine][0]
        if (~mine).any():
            other[row] = cosine[row, ~mine].max()
    return own, other


def _normalise(rows: np.ndarray) -> np.ndarray:
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-12)


def plot_reconstructions(recon: Reconstructions, path, class_names=None) -> None:
    """PNG of the reconstructions: images as images, tabular inputs as one bar chart each."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from bastion.fsutil import atomic_write

    count = len(recon.classes)
    columns = min(count, 5)
    rows = -(-count // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows), squeeze=False)
    try:
        for ax, image, cls, conf in zip(
            axes.flat, recon.images, recon.classes, recon.confidence, strict=False
        ):
            name = class_names[cls] if class_names is not None else cls
            _draw(ax, image)
            ax.set_title(f"{name} (p={conf:.2f})", fontsize=8)
        for ax in list(axes.flat)[count:]:
            ax.axis("off")
        figure.suptitle("Class representatives reconstructed from the model (MIFace)")
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(figure)
    atomic_write(path, buffer.getvalue())


def _draw(ax, image: np.ndarray) -> None:
    squeezed = np.squeeze(image)
    if squeezed.ndim == 3 and squeezed.shape[0] in (3, 4):  # CHW colour
        ax.imshow(np.clip(np.moveaxis(squeezed, 0, -1), 0, 1))
    elif squeezed.ndim == 2:
        ax.imshow(squeezed, cmap="gray")
    else:
        flat = squeezed.reshape(-1)
        side = math.isqrt(flat.size)
        if side * side == flat.size and flat.size >= 16:
            ax.imshow(flat.reshape(side, side), cmap="gray")
        else:
            ax.bar(np.arange(flat.size), flat)
            return
    ax.set_xticks([])
    ax.set_yticks([])
