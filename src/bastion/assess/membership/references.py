"""Reference models: trained on random halves of the audit pool, in parallel.

Every record of the pool is in the training set of exactly half of the reference models
(Carlini et al. 2022, "balanced" sampling), so each record has both IN and OUT models for the
online attacks and OUT models for the offline ones. A worker trains one model and returns
only its class probabilities on the pool; models never travel between processes.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bastion.errors import InputError, UsageError
from bastion.models.classifier import as_classifier

TrainFn = Callable[[np.ndarray, np.ndarray, int], Any]

# A reference model should learn from a training set about the target's size; below this
# many records per reference model its scores say nothing about the target.
MIN_RECORDS_PER_REFERENCE = 10


@dataclass(frozen=True)
class ReferenceOutputs:
    probabilities: np.ndarray  # (references, records, classes)
    in_mask: np.ndarray  # (references, records): record was in the reference's training set


def balanced_membership(n_references: int, n_records: int, rng: np.random.Generator) -> np.ndarray:
    """A (references, records) mask with exactly half of the references IN for each record."""
    ranks = rng.random((n_references, n_records)).argsort(axis=0)
    return ranks < n_references // 2


def check_reference_budget(n_references: int, y: np.ndarray, n_classes: int) -> None:
    """Refuse a reference count that the records cannot support, in the user's terms."""
    n_records = len(y)
    needed = max(2 * MIN_RECORDS_PER_REFERENCE, 2 * n_references)
    if n_records < needed:
        raise InputError(
            f"too few records for {n_references} reference models: each trains on half of "
            f"the {n_records} records, and {needed} are needed (at least "
            f"{MIN_RECORDS_PER_REFERENCE} per training set and two per reference model); "
            "give more --population data or ask for fewer --references"
        )
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < 2:
        raise InputError(
            f"class {int(counts.argmin())} has {int(counts.min())} record(s); every class needs "
            "at least two so that each reference model's half sees it"
        )


class CloneAndFit:
    """The default training function for a scikit-learn estimator: clone it and fit."""

    def __init__(self, estimator: Any) -> None:
        self.estimator = estimator

    def __call__(self, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
        from sklearn.base import clone

        model = clone(self.estimator)
        if "random_state" in model.get_params():
            model.set_params(random_state=seed)
        return model.fit(x, y)


def _probabilities(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities with one column per class index, whatever the model returns."""
    options = {"input_shape": tuple(x.shape[1:])} if _is_torch(model) else {}
    classifier = as_classifier(model, **options)
    probs = np.asarray(classifier.predict_proba(x), dtype=np.float64)
    return probs


def _is_torch(model: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(model, torch.nn.Module)


def train_one(
    train_fn: TrainFn,
    x_train: np.ndarray,
    y_train: np.ndarray,
    seed: int,
    x_eval: np.ndarray,
    n_classes: int,
) -> tuple[str, Any]:
    """Train one reference model and score the pool: ("ok", probs) or ("error", message).

    Errors come back as text so that any exception, picklable or not, reaches the user.
    """
    try:
        model = train_fn(x_train, y_train, seed)
    except Exception as exc:  # the user's code: any failure is reported, not re-raised
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "error", (
            f"the training function raised {type(exc).__name__}: {exc} "
            f"({where.filename}:{where.lineno})"
        )
    try:
        probs = _probabilities(model, x_eval, n_classes)
    except Exception as exc:
        return "error", (
            f"the training function returned a {type(model).__name__} that cannot score the "
            f"records ({type(exc).__name__}: {exc})"
        )
    if probs.shape != (len(x_eval), n_classes) or not np.isfinite(probs).all():
        known = getattr(model, "classes_", None)
        hint = f" (it knows classes {np.asarray(known).tolist()})" if known is not None else ""
        return "error", (
            f"the training function returned a model whose probabilities have shape "
            f"{probs.shape}{'' if np.isfinite(probs).all() else ' with NaN/inf values'}; "
            f"expected ({len(x_eval)}, {n_classes}){hint}"
        )
    return "ok", probs


def train_references(
    train_fn: TrainFn,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    n_references: int,
    rng: np.random.Generator,
    *,
    n_jobs: int | None = None,
    ray_address: str | None = None,
) -> ReferenceOutputs:
    """Train `n_references` models on balanced halves of (x, y) and score all of x."""
    if n_references < 1:
        raise UsageError("the number of reference models must be at least 1")
    check_reference_budget(n_references, y, n_classes)
    in_mask = balanced_membership(n_references, len(x), rng)
    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=n_references)]
    jobs = [(x[mask], y[mask], seed) for mask, seed in zip(in_mask, seeds, strict=True)]
    if ray_address is not None:
        results = _run_on_ray(ray_address, train_fn, jobs, x, n_classes)
    else:
        results = _run_locally(n_jobs, train_fn, jobs, x, n_classes)
    probabilities = []
    for index, (status, value) in enumerate(results):
        if status != "ok":
            raise InputError(f"reference model {index}: {value}")
        probabilities.append(value)
    return ReferenceOutputs(np.stack(probabilities), in_mask)


def _run_locally(n_jobs, train_fn, jobs, x_eval, n_classes) -> list[tuple[str, Any]]:
    from joblib import Parallel, delayed

    workers = n_jobs if n_jobs is not None else -1
    if workers == 1:
        return [train_one(train_fn, xt, yt, s, x_eval, n_classes) for xt, yt, s in jobs]
    return Parallel(n_jobs=workers, backend="loky")(
        delayed(train_one)(train_fn, xt, yt, s, x_eval, n_classes) for xt, yt, s in jobs
    )


def _run_on_ray(address: str, train_fn, jobs, x_eval, n_classes) -> list[tuple[str, Any]]:
    """Train on a Ray cluster. A connection this process already holds is used as it is."""
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs the ray package (pip install 'bastion-ml[ray]')") from None
    connected_here = not ray.is_initialized()
    if connected_here:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(f"cannot connect to the Ray cluster at {address}: {exc}") from None
    try:
        remote = ray.remote(train_one)
        shared_eval = ray.put(x_eval)
        shared_fn = ray.put(train_fn)
        pending = [
            remote.remote(shared_fn, xt, yt, s, shared_eval, n_classes) for xt, yt, s in jobs
        ]
        return ray.get(pending)
    finally:
        if connected_here:
            ray.shutdown()
