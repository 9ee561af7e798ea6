"""Bastion's backdoor detector vs ART's ActivationDefence and SpectralSignatureDefense on the
same poisoned data (digits, 5% of rows BadNets-triggered and relabelled as class 0) and the
same trained torch model: precision, recall, F1 and time. Each detector is timed from the
trained model and the data to its flagged rows (activations + detection), RUNS times,
interleaved; the median counts. A second, larger scenario (LARGE_ROWS rows made from digits
by one-pixel shifts and noise, a wider model) shows how the per-class work scales; it is
reported on its own. Writes bench/poison/results.json."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits
from torch import nn

from bastion.assess.poisoning import Trigger, badnets
from bastion.data.poison import check_dataset
from bastion.models.torch_classifier import TorchClassifier

HERE = Path(__file__).parent
SEED = 0
RUNS = 11
OURS = "Bastion (backdoor)"
LARGE_ROWS = 20_000


def poisoned_digits(rows: int | None = None):
    """Digits with 5% BadNets poison; with `rows`, that many images made from the 1797
    digits, each copy shifted by one pixel in one of 8 directions (or not) and given
    Gaussian noise (sd 0.05, clipped to [0, 1]), all from SEED."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target
    if rows is not None:
        x, y = _augmented(x, y, rows)
    return badnets(
        x,
        y,
        0.05,
        np.random.default_rng(SEED),
        target=0,
        trigger=Trigger.fit(x, patch=2),
    )


def _augmented(x: np.ndarray, y: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    source = np.arange(rows) % len(x)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    images = np.empty((rows, *x.shape[1:]), np.float32)
    for copy, start in enumerate(range(0, rows, len(x))):
        dy, dx = shifts[copy % len(shifts)]
        block = source[start : start + len(x)]
        images[start : start + len(block)] = _shifted(x[block], dy, dx)
    noise = rng.normal(0.0, 0.05, images.shape).astype(np.float32)
    return np.clip(images + noise, 0.0, 1.0), y[source]


def _shifted(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved by (dy, dx) pixels, the vacated edge blank."""
    moved = np.zeros_like(images)
    height, width = images.shape[-2:]
    moved[..., max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = images[
        ..., max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return moved


def train(x: np.ndarray, y: np.ndarray, widths: tuple[int, int] = (64, 32)) -> nn.Module:
    torch.manual_seed(SEED)
    first, second = widths
    net = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, first),
        nn.ReLU(),
        nn.Linear(first, second),
        nn.ReLU(),
        nn.Linear(second, 10),
    )
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    inputs, labels = torch.as_tensor(x), torch.as_tensor(y)
    epochs = max(5, 30 * 1797 // len(x))  # about the same number of steps at any size
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(inputs[batch]), labels[batch]).backward()
            optimiser.step()
    return net.eval()


def score(flagged: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    hits = len(np.intersect1d(flagged, truth))
    precision = hits / len(flagged) if len(flagged) else 0.0
    recall = hits / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "flagged": len(flagged),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
    }


def detectors(net: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    """Each detector as a call that does the timed work: from the trained model and the data
    to the flagged rows, i.e. the penultimate/last-layer activations plus the detection. The
    model wrappers (Bastion's TorchClassifier, ART's PyTorchClassifier) are built once,
    outside the timed calls, on both sides."""
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    ours = TorchClassifier(net, input_shape=(1, 8, 8))
    theirs = PyTorchClassifier(
        net,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    onehot = np.eye(10)[y]

    def bastion() -> np.ndarray:
        result = check_dataset(x, y, features=ours.features(x), seed=SEED, detectors=("backdoor",))
        return result.flagged("backdoor")

    def activation_defence() -> np.ndarray:
        _, clean = ActivationDefence(theirs, x, onehot).detect_poison(
            nb_clusters=2, nb_dims=10, reduce="PCA"
        )
        return np.flatnonzero(np.asarray(clean) == 0)

    def spectral_signature() -> np.ndarray:
        _, clean = SpectralSignatureDefense(
            theirs, x, onehot, batch_size=128, eps_multiplier=1.5, expected_pp_poison=0.33
        ).detect_poison()
        return np.flatnonzero(np.asarray(clean) == 0)

    return {
        OURS: bastion,
        "ART ActivationDefence": activation_defence,
        "ART SpectralSignatureDefense": spectral_signature,
    }


def measure(calls: dict[str, Callable[[], Any]], truth: np.ndarray) -> dict[str, dict]:
    """RUNS rounds, each running every detector once in turn (so load on a shared machine
    falls on all of them alike); per detector the median wall-clock seconds (and the median
    CPU seconds of the process, all threads: less sensitive to other programs' load), and
    the scores of its run with the median F1 (ART's k-means is unseeded, so its flags vary
    between runs)."""
    runs: dict[str, list[tuple[float, float, dict[str, float]]]] = {name: [] for name in calls}
    for _ in range(RUNS):
        for name, call in calls.items():
            start, cpu = time.perf_counter(), time.process_time()
            flagged = call()
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
            runs[name].append((wall, cpu, score(flagged, truth)))
    rows = {}
    for name, results in runs.items():
        seconds = sorted(wall for wall, _, _ in results)
        by_f1 = sorted((r for _, _, r in results), key=lambda r: r["f1"])
        rows[name] = {
            **by_f1[len(by_f1) // 2],
            "f1_range": [by_f1[0]["f1"], by_f1[-1]["f1"]],
            "seconds": round(statistics.median(seconds), 5),
            "seconds_range": [round(seconds[0], 5), round(seconds[-1], 5)],
            "cpu_seconds": round(statistics.median(cpu for _, cpu, _ in results), 5),
        }
    return rows


def report(title: str, rows: dict[str, dict]) -> dict[str, float]:
    print(f"\n{title}")
    print(
        f"{'detector':30} {'flagged':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'F1 range':>12} "
        f"{'median s':>9} {'s range':>16} {'CPU s':>8}"
    )
    for name, row in rows.items():
        low, high = row["f1_range"]
        fastest, slowest = row["seconds_range"]
        print(
            f"{name:30} {row['flagged']:7d} {row['precision']:6.3f} {row['recall']:6.3f} "
            f"{row['f1']:6.3f} {low:5.3f}-{high:5.3f} {row['seconds']:9.4f} "
            f"{fastest:7.4f}-{slowest:7.4f} {row['cpu_seconds']:8.4f}"
        )
    speedups = {
        name: round(row["seconds"] / rows[OURS]["seconds"], 2)
        for name, row in rows.items()
        if name != OURS
    }
    cpu = {
        name: round(row["cpu_seconds"] / rows[OURS]["cpu_seconds"], 2)
        for name, row in rows.items()
        if name != OURS
    }
    print("ART median time / Bastion median time:", speedups, "(CPU time:", cpu, ")")
    return {"wall": speedups, "cpu": cpu}


def scenario(rows: int | None, widths: tuple[int, int]) -> dict[str, Any]:
    """Train the model on the poisoned data and time every detector in both BLAS settings."""
    data = poisoned_digits(rows)
    net = train(data.x, data.y, widths)
    calls = detectors(net, data.x, data.y)
    for call in calls.values():  # warm-up: first-call imports and thread-pool discovery
        call()
    settings = {}
    # Default: numpy's BLAS with its own thread count (Bastion limits its own small matrices
    # to one BLAS thread; ART does not). One thread: every BLAS call in the process limited.
    for setting, limit in (("default BLAS threads", None), ("one BLAS thread for all", 1)):
        with threadpool_limits(limits=limit, user_api="blas"):
            rows_scored = measure(calls, data.rows)
        title = f"{len(data.x)} rows, model 64-{widths[0]}-{widths[1]}-10, {setting}"
        settings[setting] = {"results": rows_scored, "speedup": report(title, rows_scored)}
    return {
        "rows": len(data.x),
        "poisoned_rows": len(data.rows),
        "model": f"MLP 64-{widths[0]}-{widths[1]}-10",
        "settings": settings,
    }


def main() -> None:
    torch.set_num_threads(1)
    digits = scenario(None, (64, 32))
    large = scenario(LARGE_ROWS, (256, 128))
    document = {
        "dataset": "sklearn digits, 5% BadNets (2x2 patch) relabelled to class 0",
        "poisoned_rows": digits["poisoned_rows"],
        "timed": "per detector: activations of the trained model on the data + detection; "
        "model wrappers built once outside",
        "runs": RUNS,
        "settings": digits["settings"],
        "large": {
            "dataset": f"{LARGE_ROWS} rows from sklearn digits (one-pixel shifts, Gaussian "
            "noise sd 0.05), 5% BadNets (2x2 patch) relabelled to class 0",
            **large,
        },
    }
    (HERE / "results.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
