"""One resolver for `--model` / `--model-url`, shared by every command that assesses a model.

- a TorchScript archive: loaded with `torch.jit.load` after a scan that tolerates only
  TorchScript's own classes (white-box);
- a torch `state_dict` (.pt/.pth) or `.safetensors` file together with `factory`
  (`package.module:function` returning the `nn.Module`), loaded weights-only (white-box);
- an ONNX file: ONNX Runtime (gradient-free);
- a scikit-learn model in pickle/joblib: through `bastion.models.load` (scanned first);
- a URL: a remote JSON endpoint (black-box, with a query budget).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bastion.errors import InputError, RefusedError, UsageError
from bastion.findings import Finding, Severity
from bastion.models.classifier import Classifier, ClipValues, SklearnClassifier
from bastion.models.loading import load

# Globals that only TorchScript's own loader resolves (it never imports Python modules).
_TORCHSCRIPT_OWN = ("__torch__.", "torch.jit._pickle.")


def resolve_model(
    path: str | os.PathLike[str] | None,
    factory: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    clip_values: ClipValues | None = None,
    url: str | None = None,
    budget: int | None = None,
    n_classes: int | None = None,
    verify_key: str | os.PathLike[str] | None = None,
    fail_on: Severity = Severity.HIGH,
    device: str | None = None,
) -> Classifier:
    """A `Classifier` for a model file (or URL); InputError/RefusedError/UsageError on trouble."""
    if url is not None:
        from bastion.models.http_classifier import HttpClassifier

        return HttpClassifier(
            url, input_shape=input_shape, n_classes=n_classes, clip_values=clip_values,
            budget=budget,
        )
    if path is None:
        raise UsageError("give a model file (--model) or a model URL (--model-url)")
    target = Path(path)
    if not target.is_file():
        raise InputError(f"{target}: no such model file")
    if _is_torchscript(target):
        module = _load_torchscript(target, verify_key, fail_on)
        return _torch(module, input_shape, clip_values, n_classes, device, target)
    loaded = load(target, verify_key=verify_key, fail_on=fail_on)
    if factory is not None:
        module = _build(factory)
        _load_weights(module, loaded, target)
        return _torch(module, input_shape, clip_values, n_classes, device, target)
    if hasattr(loaded, "graph") and hasattr(loaded, "SerializeToString"):
        from bastion.models.onnx_classifier import OnnxClassifier

        return OnnxClassifier(loaded, input_shape=input_shape, clip_values=clip_values)
    if isinstance(loaded, Mapping):
        raise UsageError(
            f"{target} holds weights only; name the code that builds the network with "
            "--model-factory package.module:function (or save a TorchScript archive)"
        )
    if hasattr(loaded, "predict_proba") or hasattr(loaded, "predict"):
        known = getattr(loaded, "n_features_in_", None) is not None  # the model's own shape wins
        return SklearnClassifier(
            loaded, input_shape=None if known else input_shape, clip_values=clip_values
        )
    raise InputError(f"{target}: holds a {type(loaded).__name__}, not a model Bastion can assess")


def class_indices(dataset: Any, classifier: Classifier) -> np.ndarray:
    """The data's labels as the model's class indices."""
    if dataset.y is None:
        raise InputError(f"{dataset.source}: no labels; name the label column with --label "
                         "or store y in the .npz")
    raw = np.asarray(dataset.classes, dtype=object)[dataset.y]
    if hasattr(classifier, "to_indices"):
        return classifier.to_indices(raw)
    if not all(isinstance(v, (int, np.integer)) for v in raw.tolist()):
        raise InputError(
            f"{dataset.source}: labels must be class indices 0..{classifier.n_classes - 1} "
            "for this model"
        )
    labels = raw.astype(np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= classifier.n_classes):
        raise InputError(
            f"{dataset.source}: labels must be class indices 0..{classifier.n_classes - 1}; "
            f"got values from {labels.min()} to {labels.max()}"
        )
    return labels


def model_labels(model: Any, data: Any) -> np.ndarray:
    """Labels as the model's class indices, the same for every file whatever it contains."""
    raw = np.asarray(data.classes, dtype=object)[data.y]
    classes = getattr(model, "classes_", None)
    if classes is not None:
        lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
        unknown = [v for v in set(raw.tolist()) if v not in lookup]
        if unknown:
            raise InputError(f"{data.source}: label {unknown[0]!r} is not one of the model's "
                             "classes")  # fmt: skip
        return np.array([lookup[v] for v in raw.tolist()], dtype=np.int64)
    try:
        return raw.astype(np.int64)
    except (TypeError, ValueError):
        raise InputError(f"{data.source}: a torch model needs integer class labels") from None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _load_torchscript(path: Path, verify_key: Any, fail_on: Severity) -> Any:
    from bastion.supplychain.scan import scan_file

    if verify_key is not None:
        from bastion.supplychain.sign import verify_model

        verify_model(path, verify_key, None)
    report = scan_file(path)
    blocking = [f for f in report.findings if f.severity >= fail_on and not _torchscript_own(f)]
    if blocking:
        worst = max(blocking, key=lambda f: f.severity)
        raise RefusedError(
            f"refusing to load {path}: {worst.title} ({worst.rule_id}, {worst.severity}) - "
            f"see `bastion scan {path}`"
        )
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # deprecated upstream, still how TorchScript loads
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: not a loadable TorchScript archive ({first})") from None


def _torchscript_own(finding: Finding) -> bool:
    name = str(finding.evidence.get("global", ""))
    return name.startswith(_TORCHSCRIPT_OWN)


def _build(factory: str) -> Any:
    """Call the user's `package.module:function` and check it returns an `nn.Module`."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the user's own package in cwd
    function = import_callable(factory, "--model-factory")
    import torch

    module = function()
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{factory} returned a {type(module).__name__}, not a torch nn.Module")
    return module


def import_callable(spec: str, what: str) -> Callable[..., Any]:
    """`package.module:function` or `path/to/file.py:function`."""
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise UsageError(f"{what} must look like module:function or file.py:function")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise InputError(f"{what}: no such file {path}")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module  # so reference-model workers can unpickle it
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ImportError as exc:
        raise InputError(f"{what}: cannot import {target} ({exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise InputError(f"{what}: {target} has no function {name!r}")
    return function


def fill_module(module: Any, weights: Any, path: str | Path) -> Any:
    """The torch `module` with the `weights` loaded from `path` (a state_dict), in eval mode."""
    _load_weights(module, weights, Path(path))
    return module.eval()


def _load_weights(module: Any, weights: Any, path: Path) -> None:
    import torch

    if not isinstance(weights, Mapping):
        raise InputError(f"{path}: --model-factory needs a state_dict or safetensors file")
    tensors = {name: torch.as_tensor(np.asarray(value)) if not torch.is_tensor(value) else value
               for name, value in weights.items()}  # fmt: skip
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shapes that do not match
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"{path}: weights do not fit the factory's network: {detail}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {', '.join(result.missing_keys[:5])}")
    if result.unexpected_keys:
        problems.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
    if problems:
        detail = "; ".join(problems)
        raise InputError(f"{path}: weights do not fit the factory's network ({detail})")


def _torch(
    module: Any, input_shape: tuple[int, ...] | None, clip_values: ClipValues | None,
    n_classes: int | None, device: str | None, path: Path,
) -> Classifier:
    if input_shape is None:
        raise UsageError(f"{path}: a torch model needs the input shape (taken from --data)")
    from bastion.models.torch_classifier import TorchClassifier

    try:
        return TorchClassifier(
            module, input_shape=input_shape, clip_values=clip_values, n_classes=n_classes,
            device=device,
        )
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(
            f"{path}: the model does not accept inputs of shape {input_shape}: {first}"
        ) from None
