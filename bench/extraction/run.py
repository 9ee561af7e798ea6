"""bench/extraction: how fast a copier's fidelity grows with its query budget, with no
defence and with each output policy, and how many queries the gateway's monitor needs to
flag each attack (and that it stays quiet on benign held-out traffic).

    nice -n 10 .venv/bin/python bench/extraction/run.py [--seed 0] [--out FILE]

Victim: logistic regression on scikit-learn's digits (900 training rows). Attacker's pools:
400 other digits rows (a natural public pool, the Knockoff setting) and uniform noise over
the input range. Fidelity is agreement with the victim on 497 held-out rows. The output
policies are checked against the peer, ART 1.20's post-processors (Rounded, ClassLabels,
ReverseSigmoid) on the same probabilities: the largest difference is reported (install ART
with bench/setup-ml-peers.sh; without it that column says so). Writes
bench/extraction/results.json; see docs/benchmarks-serve.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "src"))

from bastion.assess.extraction import attack  # noqa: E402
from bastion.models.classifier import as_classifier, predict  # noqa: E402
from bastion.serve.harden import apply, parse_policy  # noqa: E402
from bastion.serve.limits import InputSchema  # noqa: E402
from bastion.serve.monitor import Monitor, MonitorConfig  # noqa: E402
from bastion.serve.store import MemoryStore  # noqa: E402

BUDGETS = (50, 100, 200, 400)
DEFENCES = ("none", "round:1", "top-k:1", "label", "reverse-sigmoid:0.7:0.2")


class Watched:
    """The victim as the gateway's monitor sees it: every query is observed, and the query
    count at the first alert is kept (the attack itself is not stopped, to measure it)."""

    def __init__(self, target, monitor: Monitor) -> None:
        self.target = target
        self.monitor = monitor
        self.n_classes, self.input_shape = target.n_classes, target.input_shape
        self.clip_values = target.clip_values
        self.queries = 0
        self.first_alert: int | None = None

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = self.target.predict_proba(x)
        for row, answer in zip(x, p, strict=True):
            self.queries += 1
            verdict = asyncio.run(self.monitor.observe("k", row[None], answer[None]))
            if verdict.alert and self.first_alert is None:
                self.first_alert = self.queries
        return p


def monitor() -> Monitor:
    return Monitor(MonitorConfig(action="log"), InputSchema((64,), 0.0, 16.0), MemoryStore())


def peer_differences() -> dict[str, float | str]:
    """Our output policies against ART's post-processors on the same probabilities."""
    try:
        from art.defences.postprocessor import ClassLabels, ReverseSigmoid, Rounded
    except ImportError:
        return {"art": "not installed (bash bench/setup-ml-peers.sh)"}
    p = np.random.default_rng(1).dirichlet(np.ones(10), size=1000)
    pairs = {
        "round:1 vs Rounded(1)": (apply((parse_policy("round:1"),), p), Rounded(decimals=1)(p)),
        # ClassLabels row by row: on a batch, ART 1.20 marks the argmax column of every
        # row in every row (measured below).
        "label vs ClassLabels (per row)": (
            apply((parse_policy("label"),), p),
            np.vstack([ClassLabels()(row[None]) for row in p])),
        "reverse-sigmoid:0.7:0.2 vs ReverseSigmoid(0.7, 0.2)": (
            apply((parse_policy("reverse-sigmoid:0.7:0.2"),), p),
            ReverseSigmoid(beta=0.7, gamma=0.2)(p)),
    }
    differences: dict[str, float | str] = {
        name: float(np.abs(ours - theirs).max()) for name, (ours, theirs) in pairs.items()
    }
    differences["ClassLabels on one batch: classes marked per row"] = float(
        ClassLabels()(p).sum(axis=1).mean())
    return differences


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(args.seed).permutation(len(x))
    train, pool_rows, held = order[:900], order[900:1300], order[1300:]
    victim = as_classifier(LogisticRegression(max_iter=3000).fit(x[train], y[train]),
                           clip_values=(0.0, 16.0))
    labels = predict(victim, x[held])
    pools = {"digits pool": x[pool_rows], "uniform noise": None}
    rows = []
    for pool_name, pool in pools.items():
        for strategy in ("random", "adaptive", "jacobian"):
            for defence in DEFENCES:
                policies = () if defence == "none" else (parse_policy(defence),)
                watched = Watched(victim, monitor())
                run = attack(watched, x[held], y[held], pool=pool, budgets=BUDGETS,
                             strategy=strategy, policies=policies, target_labels=labels,
                             rng=np.random.default_rng(args.seed))
                rows.append({"pool": pool_name, "strategy": strategy, "defence": defence,
                             "fidelity": {c.queries: round(c.fidelity, 3)
                                          for c in run.checkpoints},
                             "monitor_first_alert": watched.first_alert})
    benign = Watched(victim, monitor())
    benign.predict_proba(x[held])
    print(f"{'pool':<14} {'strategy':<9} {'defence':<24} "
          + " ".join(f"{b:>6}" for b in BUDGETS) + "  alert@")
    for row in rows:
        cells = " ".join(f"{row['fidelity'].get(b, float('nan')):>6.3f}" for b in BUDGETS)
        alert = row["monitor_first_alert"] or "-"
        print(f"{row['pool']:<14} {row['strategy']:<9} {row['defence']:<24} {cells}  {alert}")
    print(f"benign held-out replay: {benign.queries} queries, first alert: "
          f"{benign.first_alert or 'none'}")
    peers = peer_differences()  # max |difference| unless the name says otherwise
    for name, value in peers.items():
        print(f"peer check, {name}: {value}")
    Path(args.out).write_text(json.dumps({
        "seed": args.seed, "budgets": BUDGETS, "runs": rows,
        "benign": {"queries": benign.queries, "first_alert": benign.first_alert},
        "peer_postprocessors": peers,
    }, indent=2) + "\n")


if __name__ == "__main__":
    main()
