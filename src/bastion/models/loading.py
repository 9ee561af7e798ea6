"""Safe loading: verify the signature (when a key is given), scan the file, refuse it when a
finding reaches the threshold, and only then load it with the loader its format needs.

Nothing is unpickled that has not been scanned, and torch checkpoints are loaded with
`weights_only=True` even after a clean scan.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bastion.errors import InputError, RefusedError
from bastion.findings import Severity
from bastion.supplychain.scan import scan_file

PathLike = str | os.PathLike[str]

# How many folders up a folder signature (model.sig) is looked for.
_SIGNATURE_LEVELS = 3


def _signed_scope(path: Path, signature: PathLike | None) -> tuple[Path, Path | None]:
    """What the signature covers: the file itself (NAME.sig beside it) or an enclosing
    folder signed as a whole (FOLDER/model.sig)."""
    from bastion.supplychain.sign import default_signature_path

    if signature is not None:
        sig = Path(signature)
        folder = sig.parent
        covers_folder = sig.name == default_signature_path(folder).name and path.is_relative_to(
            folder
        )
        return (folder if covers_folder else path), sig
    candidates = [path, *list(path.parents)[:_SIGNATURE_LEVELS]]
    for scope in candidates:
        if default_signature_path(scope).is_file():
            return scope, None
    return path, None  # verify() then says which signature file is missing


def _load_torch(path: Path) -> Any:
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: a PyTorch checkpoint needs torch (pip install torch)") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise InputError(
            f"{path}: holds more than tensors (a whole module?), which weights-only loading "
            f"refuses: {first_line}. Save a state_dict or safetensors instead"
        ) from None


def _load_safetensors(path: Path) -> Any:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise InputError(f"{path}: safetensors files need the safetensors package") from None
    return load_file(str(path))


def _load_numpy(path: Path) -> Any:
    import numpy as np

    return np.load(path, allow_pickle=False)


def _load_joblib(path: Path) -> Any:
    try:
        import joblib
    except ImportError:
        raise InputError(f"{path}: a joblib file needs joblib (pip install joblib)") from None
    return joblib.load(path)


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as handle:
        return pickle.load(handle)  # only after the scan found nothing at the threshold


def _load_onnx(path: Path) -> Any:
    import onnx

    return onnx.load(str(path))


# Detected formats (as the scanner reports them) -> loader, most specific first.
_LOADERS: list[tuple[Callable[[list[str]], bool], Callable[[Path], Any]]] = [
    (lambda f: "torch-legacy" in f or "torch-legacy-tar" in f, _load_torch),
    (lambda f: "zip" in f and "pickle" in f and "keras" not in f, _load_torch),
    (lambda f: "safetensors" in f, _load_safetensors),
    (lambda f: f[:1] == ["numpy"], _load_numpy),
    (lambda f: "compressed" in f or "joblib" in f, _load_joblib),
    (lambda f: f[:1] == ["pickle"], _load_pickle),
    (lambda f: f[:1] == ["onnx"], _load_onnx),
]


def load(
    path: PathLike,
    *,
    verify_key: PathLike | None = None,
    signature: PathLike | None = None,
    fail_on: Severity = Severity.HIGH,
    trusted: Iterable[str] = (),
) -> Any:
    """Load a model file safely: verify (with `verify_key`), scan, refuse, load.

    Raises VerificationError when the signature does not match, RefusedError when the scan
    finds something at or above `fail_on`, InputError for a missing or unsupported file.
    """
    target = Path(path)
    if not target.is_file():
        raise InputError(f"{target}: no such model file")
    if verify_key is not None:
        from bastion.supplychain.sign import verify_model

        scope, sig = _signed_scope(target, signature)
        verify_model(scope, verify_key, sig)
    report = scan_file(target, trusted=trusted)
    blocking = sorted(
        (f for f in report.findings if f.severity >= fail_on), key=lambda f: -f.severity
    )
    if blocking:
        worst = blocking[0]
        raise RefusedError(
            f"refusing to load {target}: {worst.title} ({worst.rule_id}, {worst.severity}); "
            f"{len(blocking)} finding(s) at or above {fail_on} - see `bastion scan {target}`"
        )
    for matches, loader in _LOADERS:
        if matches(report.formats):
            return loader(target)
    detected = ", ".join(report.formats) or "unknown content"
    raise InputError(f"{target}: Bastion does not load this format ({detected})")
