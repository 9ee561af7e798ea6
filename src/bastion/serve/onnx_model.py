"""ONNX classifiers for `bastion serve`: an onnxruntime session that answers class
probabilities, whichever way the exporter wrote them (a float tensor (n, k), or the
scikit-learn converters' list of {class: probability} maps)."""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.errors import InputError

_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxClassifier:
    clip_values = None

    def __init__(self, model: Any, source: str,
                 input_shape: tuple[int, ...] | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise InputError(f"{source}: serving ONNX needs onnxruntime (pip install "
                             "onnxruntime)") from None
        try:
            self.session = ort.InferenceSession(model.SerializeToString(),
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own error family
            raise InputError(f"{source}: onnxruntime cannot load the model: {exc}") from None
        first = self.session.get_inputs()[0]
        if first.type not in _FLOAT_TYPES or len(first.shape) < 2:
            raise InputError(f"{source}: first input must be a float batch tensor, got "
                             f"{first.type} {first.shape}")
        dims = first.shape[1:]
        fixed = all(isinstance(d, int) and d > 0 for d in dims)
        self.input_shape = tuple(dims) if fixed else input_shape
        if self.input_shape is None:
            raise InputError(f"{source}: the model's input shape {first.shape} is not fixed; "
                             "give --input-shape")
        self.input_name, self.dtype = first.name, _FLOAT_TYPES[first.type]
        self.output_name = self._probability_output(source)
        # One probe row: the class count, and a model that cannot run fails now, not later.
        self.n_classes = self.predict_proba(np.zeros((1, *self.input_shape))).shape[1]

    def _probability_output(self, source: str) -> str:
        outputs = self.session.get_outputs()
        for output in outputs:
            if output.type.startswith("seq(map(") or (
                output.type in _FLOAT_TYPES and len(output.shape) == 2
            ):
                return output.name
        raise InputError(f"{source}: no output holds class probabilities "
                         f"({', '.join(o.name + ' ' + o.type for o in outputs)})")

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        (out,) = self.session.run([self.output_name],
                                  {self.input_name: np.asarray(x, dtype=self.dtype)})
        if isinstance(out, list):  # scikit-learn converters' ZipMap: one dict per row
            classes = sorted(out[0]) if out else []
            return np.array([[row[c] for c in classes] for row in out], dtype=np.float64)
        return np.asarray(out, dtype=np.float64)
