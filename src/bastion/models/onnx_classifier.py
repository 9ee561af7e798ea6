"""ONNX Runtime adapter: any ONNX classifier as a gradient-free `Classifier`.

The output used is the probabilities one (named like it, as skl2onnx names it) or else the
first float output of shape (n, k); outputs that are not probabilities (logits) go through a
softmax. skl2onnx's ZipMap output (a list of {class: probability}) is read in class order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bastion.errors import InputError, UsageError
from bastion.models.classifier import ClipValues

_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}
OUTPUT_KINDS = ("auto", "probabilities", "logits")


def _session(model: Any) -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise InputError("ONNX models need onnxruntime (pip install onnxruntime)") from None
    if isinstance(model, (str, Path)):
        model = Path(model).read_bytes()
    elif hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    try:
        return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad models
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"ONNX Runtime cannot load the model: {first}") from None


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _looks_like_probabilities(scores: np.ndarray) -> bool:
    return bool(
        len(scores) and (scores >= 0).all() and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3)
    )


class OnnxClassifier:
    """An ONNX model (path, bytes or `onnx.ModelProto`) run by ONNX Runtime on the CPU."""

    def __init__(
        self,
        model: Any,
        *,
        input_shape: tuple[int, ...] | None = None,
        clip_values: ClipValues | None = None,
        output: str | None = None,
        output_kind: str = "auto",
        batch_size: int = 1024,
    ) -> None:
        if output_kind not in OUTPUT_KINDS:
            raise UsageError(f"output_kind must be one of {', '.join(OUTPUT_KINDS)}")
        self.session = _session(model)
        first_input = self.session.get_inputs()[0]
        self.input_name = first_input.name
        self.dtype = _DTYPES.get(first_input.type)
        if self.dtype is None:
            raise InputError(f"ONNX input {first_input.name!r} has type {first_input.type}; "
                             "Bastion feeds float or double tensors")
        declared = tuple(first_input.shape[1:])
        fixed = all(isinstance(d, int) and d > 0 for d in declared)
        # the model's own fixed shape wins, so data of another shape is reported as such
        self.input_shape = declared if fixed else (tuple(input_shape) if input_shape else None)
        if self.input_shape is None:
            raise UsageError("the ONNX model does not fix its input shape; pass input_shape")
        self.output_name = output or self._pick_output()
        self.output_kind = output_kind
        self.clip_values = clip_values
        self.batch_size = batch_size
        self.n_classes = int(self.predict_proba(np.zeros((1, *self.input_shape))).shape[1])

    def _pick_output(self) -> str:
        outputs = self.session.get_outputs()
        for candidate in outputs:
            if "prob" in candidate.name.lower():
                return candidate.name
        for candidate in outputs:
            if candidate.type in _DTYPES and len(candidate.shape) == 2:
                return candidate.name
        names = ", ".join(o.name for o in outputs)
        raise InputError(f"no ONNX output looks like class scores (outputs: {names})")

    def _run(self, rows: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name], {self.input_name: rows.astype(self.dtype)})
        if isinstance(out, list):  # ZipMap: one {class: probability} per row
            keys = list(out[0]) if out else []
            return np.array([[row[k] for k in keys] for row in out], dtype=np.float64)
        return np.asarray(out, dtype=np.float64).reshape(len(rows), -1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        parts = [self._run(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        if not parts:
            return np.zeros((0, getattr(self, "n_classes", 0)))
        scores = np.concatenate(parts)
        kind = self.output_kind
        if kind == "logits" or (kind == "auto" and not _looks_like_probabilities(scores)):
            return softmax(scores)
        return scores
