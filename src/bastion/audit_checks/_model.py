"""The model under audit and its labelled data, loaded the same way for every check that
queries the model (a helper module, not a check).

The model is `[model] path` (the first file when several are listed), loaded through
`bastion.models.load`: scanned first and refused at high, like every load. A torch
`state_dict` or safetensors file is filled into the network `[model] factory` builds; the
factory's module (and a membership `train_fn`'s) is imported with the project folder on the
import path, so a module beside bastion.toml is found.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from bastion.config import AuditConfig, DataSet
from bastion.data import Dataset, load_dataset
from bastion.errors import InputError


def model_file(config: AuditConfig) -> Path:
    return config.model_paths()[0]


def project_callable(config: AuditConfig, spec: str, key: str) -> Any:
    """`module:function` from the configuration, importable from the project folder."""
    from bastion.models.resolve import import_callable

    root = str(config.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    return import_callable(spec, key)


def load_target(config: AuditConfig) -> Any:
    """A fitted estimator, or the factory's torch module filled with the weights."""
    from bastion.models import load
    from bastion.models.resolve import fill_module

    path = model_file(config)
    loaded = load(path)
    factory = config.model.factory
    if factory is not None:
        return fill_module(project_callable(config, factory, "model.factory")(), loaded,
                           str(path))
    if hasattr(loaded, "predict_proba"):
        return loaded
    raise InputError(f"{path} holds {type(loaded).__name__}, not a model with predict_proba; "
                     "for torch weights name the network in [model] factory = "
                     "\"module:function\"")


def classifier(config: AuditConfig, input_shape: tuple[int, ...],
               clip_values: tuple[float, float] | None = None) -> Any:
    """The model as a `Classifier`, resolved as every command resolves `--model` (TorchScript,
    torch weights with `[model] factory`, ONNX, scikit-learn; scanned first, refused at
    high), with the project folder on the import path while the factory is imported."""
    from bastion.models.resolve import resolve_model

    root = str(config.root)
    added = config.model.factory is not None and root not in sys.path
    if added:
        sys.path.insert(0, root)  # the factory's module lives beside bastion.toml
    try:
        return resolve_model(model_file(config), config.model.factory, input_shape,
                             clip_values=clip_values)
    finally:
        if added:
            sys.path.remove(root)


def model_inputs(config: AuditConfig, dataset: Dataset, rows: int | None = None) -> np.ndarray:
    """The dataset's first `rows` feature rows (all by default) as float32, shaped as
    `[model] input_shape` when that is declared."""
    x = np.asarray(dataset.x[:rows])
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise InputError(f"{dataset.source}: features must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float32)
    shape = config.model.input_shape
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        if int(np.prod(shape)) != int(np.prod(x.shape[1:])):
            raise InputError(f"{dataset.source}: rows have shape {tuple(x.shape[1:])}, which "
                             f"does not fit [model] input_shape {list(shape)}")
        x = x.reshape(len(x), *shape)
    return x


def input_range(config: AuditConfig, x: np.ndarray) -> tuple[float, float]:
    """[model] clip_values, else the range `x` spans (as the assess commands do)."""
    if config.model.clip_values is not None:
        return config.model.clip_values
    low, high = float(x.min()), float(x.max())
    if low >= high:
        raise InputError(f"{config.source or config.root}: the data hold a single value; give "
                         "the valid input range in [model] clip_values")
    return low, high


def is_torch(model: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def labelled(config: AuditConfig, which: str, model: Any) -> tuple[Dataset, np.ndarray, np.ndarray]:
    """`[data.<which>]` with its labels as the model's class indices; features as float32
    for a torch model."""
    from bastion.models.resolve import model_labels

    declared: DataSet = getattr(config.data, which)
    data = load_dataset(config.resolve(declared.path), label=declared.label)
    if data.y is None:
        raise InputError(f"{data.source}: [data.{which}] needs labels (name the column with "
                         "label = \"COLUMN\")")
    x = data.x.astype(np.float32) if is_torch(model) else data.x
    return data, x, model_labels(model, data)
