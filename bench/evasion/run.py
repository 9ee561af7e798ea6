"""Evasion attacks: Bastion against IBM ART and torchattacks on the same model and data.

A small CNN and a small MLP trained here (seeded) on scikit-learn's 8x8 digits, the same
1,000 held-out points, the same Linf epsilon and iterations for every library. Reported per
attack and library: robust accuracy (share of the 1,000 points still classified correctly on
the adversarial input, mean over --repeats seeds), seconds (best of them), and the largest
perturbation, checked against epsilon. Square Attack runs at the same query budget in every
library.

    python bench/evasion/run.py [--models cnn,mlp] [--repeats 3] [--eps 0.1] [--steps 20]
                                [--apgd-steps 50] [--queries 500] [--p-init 0.3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from bastion.assess import evasion
from bastion.models.torch_classifier import TorchClassifier

HERE = Path(__file__).resolve().parent
SEED = 0


MODELS = {
    "cnn": ("CNN: 2 conv (16, 32) + max-pool + 2 linear, input 1x8x8", (1, 8, 8)),
    # input 1x8x8 as well: torchattacks' APGD and Square only take image-shaped batches
    "mlp": ("MLP: flatten, 64-256-256-10, input 1x8x8", (1, 8, 8)),
}


def build_model(kind: str) -> nn.Module:
    torch.manual_seed(SEED)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                             nn.ReLU(), nn.Linear(256, 10))
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def data_and_model(kind: str) -> tuple[np.ndarray, np.ndarray, nn.Module]:
    """The 1,000 held-out digits and a model trained on the other 797 (seeded)."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, *MODELS[kind][1])
    order = np.random.default_rng(SEED).permutation(len(x))
    train, test = order[:797], order[797:]
    model = build_model(kind)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    inputs, labels = torch.tensor(x[train]), torch.tensor(y[train])
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(30):
        for chosen in torch.randperm(len(inputs), generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(inputs[chosen]), labels[chosen]).backward()
            optimiser.step()
    return x[test], y[test].astype(np.int64), model.eval()


def robust_accuracy(model: nn.Module, adv: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        predicted = model(torch.as_tensor(adv, dtype=torch.float32)).argmax(1).numpy()
    return float((predicted == y).mean())


def timed(
    run: Callable[[int], np.ndarray], repeats: int
) -> tuple[list[np.ndarray], float, float]:
    """The adversarial inputs of each repeat (repeat i uses seed i), the best wall time and
    the best CPU time of this process. With one torch thread the CPU time is the work done,
    and unlike wall time it does not swing with other jobs on a shared machine."""
    wall, cpu, advs = float("inf"), float("inf"), []
    for seed in range(repeats):
        torch.manual_seed(seed)  # the peers draw their random starts from the global RNGs
        np.random.seed(seed)
        started, started_cpu = time.perf_counter(), time.process_time()
        advs.append(run(seed))
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return advs, wall, cpu


def bastion_runs(model, x, y, a) -> dict[str, Callable[[int], np.ndarray]]:
    clf = TorchClassifier(model, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                          batch_size=len(x))
    return {
        "pgd": lambda seed: evasion.pgd(clf, x, y, eps=a.eps, steps=a.steps,
                                        step_size=a.eps / 4, seed=seed).x_adv,
        "apgd-ce": lambda seed: evasion.apgd_ce(clf, x, y, eps=a.eps, steps=a.apgd_steps,
                                                seed=seed).x_adv,
        "square": lambda seed: evasion.square(clf, x, y, eps=a.eps, max_queries=a.queries,
                                              p_init=a.p_init, seed=seed).x_adv,
    }


def torchattacks_runs(model, x, y, a) -> dict[str, Callable[[int], np.ndarray]]:
    import torchattacks

    inputs, labels = torch.tensor(x), torch.tensor(y)
    pgd = torchattacks.PGD(model, eps=a.eps, alpha=a.eps / 4, steps=a.steps, random_start=True)

    def apgd(seed: int) -> np.ndarray:
        attack = torchattacks.APGD(model, norm="Linf", eps=a.eps, steps=a.apgd_steps,
                                   n_restarts=1, loss="ce", seed=seed)
        return attack(inputs, labels).detach().numpy()

    def square(seed: int) -> np.ndarray:
        attack = torchattacks.Square(model, norm="Linf", eps=a.eps, n_queries=a.queries,
                                     n_restarts=1, p_init=a.p_init, seed=seed)
        return attack(inputs, labels).detach().numpy()

    return {
        "pgd": lambda seed: pgd(inputs, labels).detach().numpy(),
        "apgd-ce": apgd,
        "square": square,
    }


def art_runs(model, x, y, a) -> dict[str, Callable[[int], np.ndarray]]:
    from art.attacks.evasion import (
        AutoProjectedGradientDescent,
        ProjectedGradientDescent,
        SquareAttack,
    )
    from art.estimators.classification import PyTorchClassifier

    estimator = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=x.shape[1:],
                                  nb_classes=10, clip_values=(0.0, 1.0), device_type="cpu")
    pgd = ProjectedGradientDescent(estimator, norm=np.inf, eps=a.eps, eps_step=a.eps / 4,
                                   max_iter=a.steps, num_random_init=1, batch_size=len(x),
                                   verbose=False)
    apgd = AutoProjectedGradientDescent(estimator, norm=np.inf, eps=a.eps, eps_step=2 * a.eps,
                                        max_iter=a.apgd_steps, nb_random_init=1,
                                        batch_size=len(x), loss_type="cross_entropy",
                                        verbose=False)
    # ART's max_iter counts iterations after the initial query: budget - 1 keeps it equal
    square = SquareAttack(estimator, norm=np.inf, eps=a.eps, max_iter=a.queries - 1,
                          p_init=a.p_init, nb_restarts=1, batch_size=len(x), verbose=False)
    return {
        "pgd": lambda seed: pgd.generate(x, y=y),
        "apgd-ce": lambda seed: apgd.generate(x, y=y),
        "square": lambda seed: square.generate(x, y=y),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--apgd-steps", type=int, default=50)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--p-init", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Linf eps={args.eps}, PGD {args.steps} steps (step eps/4, random start), APGD-CE "
          f"{args.apgd_steps} steps, Square {args.queries} queries (p_init {args.p_init}); "
          f"PGD and APGD: robust accuracy is the mean over {args.repeats} seeds, time the best "
          "of them; Square: seed 0")
    rows, summaries, clean = [], {}, {}
    for kind in args.models.split(","):
        x, y, model = data_and_model(kind)
        clean[kind] = robust_accuracy(model, x, y)
        print(f"\n{MODELS[kind][0]}: {len(x)} points, clean accuracy {clean[kind]:.1%}")
        model_rows = [run_one(kind, attack, library, runs, model, x, y, args)
                      for attack in ("pgd", "apgd-ce", "square")
                      for library, runs in LIBRARIES.items()]
        rows += model_rows
        summaries[kind] = summarise(model_rows)
        print_table(model_rows, summaries[kind])
    result = {
        "config": {**vars(args), "points": 1000, "seed": SEED, "clean_accuracy": clean,
                   "models": {k: MODELS[k][0] for k in clean}, "torch": torch.__version__,
                   "machine": platform.platform()},
        "rows": rows,
        "summary": summaries,
    }
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {HERE / 'results.json'}")


LIBRARIES = {"bastion": bastion_runs, "torchattacks": torchattacks_runs, "art": art_runs}


def run_one(kind: str, attack: str, library: str, runs, model, x, y, args) -> dict:
    # Square runs once: ART's takes minutes, and its robust accuracy varies little by seed
    repeats = 1 if attack == "square" else args.repeats
    advs, seconds, cpu_seconds = timed(runs(model, x, y, args)[attack], repeats)
    largest = max(float(np.abs(a.astype(np.float64) - x.astype(np.float64)).max()) for a in advs)
    row = {
        "model": kind, "attack": attack, "library": library,
        "robust_accuracy": float(np.mean([robust_accuracy(model, a, y) for a in advs])),
        "seconds": seconds, "cpu_seconds": cpu_seconds, "max_perturbation": largest,
        "inside_ball": largest <= args.eps + 1e-6,
        "inside_range": all(a.min() >= 0.0 and a.max() <= 1.0 for a in advs),
    }
    print(f"  {attack:8s} {library:13s} robust {row['robust_accuracy']:.2%} "
          f"{seconds:7.2f} s wall {cpu_seconds:7.2f} s CPU  max |delta| {largest:.4f}",
          flush=True)
    return row


def _row(rows: list[dict], attack: str, library: str) -> dict:
    return next(r for r in rows if r["attack"] == attack and r["library"] == library)


def summarise(rows: list[dict]) -> dict:
    """The issue's targets: as strong as the stronger peer (+0.5 points) for PGD and APGD,
    PGD at least 3x faster than ART and no slower than torchattacks, Square at least as
    strong as ART's at the same budget."""
    summary: dict = {}
    for attack in ("pgd", "apgd-ce"):
        ours = _row(rows, attack, "bastion")["robust_accuracy"]
        best_peer = min(_row(rows, attack, p)["robust_accuracy"] for p in ("art", "torchattacks"))
        summary[f"{attack}_strength"] = {
            "bastion": ours, "best_peer": best_peer, "pass": bool(ours <= best_peer + 0.005),
        }
    ours = _row(rows, "pgd", "bastion")["cpu_seconds"]
    vs_art = _row(rows, "pgd", "art")["cpu_seconds"] / ours
    vs_ta = _row(rows, "pgd", "torchattacks")["cpu_seconds"] / ours
    summary["pgd_speed"] = {
        "x_faster_than_art": vs_art, "x_faster_than_torchattacks": vs_ta,
        "pass": bool(vs_art >= 3.0 and vs_ta >= 1.0),
    }
    square = _row(rows, "square", "bastion")["robust_accuracy"]
    art_square = _row(rows, "square", "art")["robust_accuracy"]
    summary["square_strength"] = {"bastion": square, "art": art_square,
                                  "pass": bool(square <= art_square)}
    return summary


def print_table(rows: list[dict], summary: dict) -> None:
    print()
    print(f"{'attack':9s} {'library':13s} {'robust acc':>10s} {'wall s':>8s} {'CPU s':>8s}")
    for row in rows:
        print(f"{row['attack']:9s} {row['library']:13s} {row['robust_accuracy']:10.2%} "
              f"{row['seconds']:8.2f} {row['cpu_seconds']:8.2f}")
    speed = summary["pgd_speed"]
    print(f"\nPGD (CPU time): {speed['x_faster_than_art']:.2f}x faster than ART, "
          f"{speed['x_faster_than_torchattacks']:.2f}x faster than torchattacks")
    for name, target in summary.items():
        print(f"  {name:16s} {'pass' if target['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
