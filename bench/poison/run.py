"""Bastion's backdoor detector vs ART's ActivationDefence and SpectralSignatureDefense on the
same poisoned data (digits, 5% of rows BadNets-triggered and relabelled as class 0) and the
same trained torch model: precision, recall, F1 and time. Writes bench/poison/results.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.assess.poisoning import Trigger, badnets
from bastion.data.poison import check_dataset
from bastion.models.torch_classifier import TorchClassifier

HERE = Path(__file__).parent
SEED = 0


def poisoned_digits():
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    return badnets(
        x,
        digits.target,
        0.05,
        np.random.default_rng(SEED),
        target=0,
        trigger=Trigger.fit(x, patch=2),
    )


def train(x: np.ndarray, y: np.ndarray) -> nn.Module:
    torch.manual_seed(SEED)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)
    )
    optimiser = torch.optim.Adam(net.parameters(), 1e-2)
    inputs, labels = torch.as_tensor(x), torch.as_tensor(y)
    for _ in range(30):
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), 64):
            batch = order[start : start + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(inputs[batch]), labels[batch]).backward()
            optimiser.step()
    return net.eval()


def score(flagged: np.ndarray, truth: np.ndarray, seconds: float) -> dict[str, float]:
    hits = len(np.intersect1d(flagged, truth))
    precision = hits / len(flagged) if len(flagged) else 0.0
    recall = hits / len(truth)
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "flagged": len(flagged),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "seconds": round(seconds, 3),
    }


def bastion(net: nn.Module, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    features = TorchClassifier(net, input_shape=(1, 8, 8)).features(x)
    result = check_dataset(x, y, features=features, seed=SEED, detectors=("backdoor",))
    return result.flagged("backdoor"), time.perf_counter() - start


def art_defences(net: nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, tuple]:
    from art.defences.detector.poison import ActivationDefence, SpectralSignatureDefense
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        net,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    onehot = np.eye(10)[y]
    results = {}
    start = time.perf_counter()
    _, clean = ActivationDefence(classifier, x, onehot).detect_poison(
        nb_clusters=2, nb_dims=10, reduce="PCA"
    )
    results["ART ActivationDefence"] = (
        np.flatnonzero(np.asarray(clean) == 0),
        time.perf_counter() - start,
    )
    start = time.perf_counter()
    _, clean = SpectralSignatureDefense(
        classifier, x, onehot, batch_size=128, eps_multiplier=1.5, expected_pp_poison=0.33
    ).detect_poison()
    results["ART SpectralSignatureDefense"] = (
        np.flatnonzero(np.asarray(clean) == 0),
        time.perf_counter() - start,
    )
    return results


def main() -> None:
    torch.set_num_threads(1)
    data = poisoned_digits()
    net = train(data.x, data.y)
    runs = {"Bastion (backdoor)": bastion(net, data.x, data.y), **art_defences(net, data.x, data.y)}
    rows = {name: score(flagged, data.rows, seconds) for name, (flagged, seconds) in runs.items()}
    ours = rows["Bastion (backdoor)"]
    print(f"{'detector':32} {'flagged':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'seconds':>8}")
    for name, row in rows.items():
        print(
            f"{name:32} {row['flagged']:7d} {row['precision']:6.3f} {row['recall']:6.3f} "
            f"{row['f1']:6.3f} {row['seconds']:8.3f}"
        )
    speedups = {
        n: round(r["seconds"] / ours["seconds"], 2)
        for n, r in rows.items()
        if n != "Bastion (backdoor)"
    }
    print("ART time / Bastion time:", speedups)
    document = {
        "dataset": "sklearn digits, 5% BadNets (2x2 patch) relabelled to class 0",
        "poisoned_rows": len(data.rows),
        "results": rows,
        "speedup": speedups,
    }
    (HERE / "results.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
