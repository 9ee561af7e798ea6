"""Model extraction (stealing): how many queries does it take to copy a model, and how much
does each output defence slow the copier down?

A Knockoff-style attack (Orekondy et al. 2019) queries the target with inputs from a public
pool, trains a surrogate on the answers and measures fidelity (agreement with the target on
held-out data) and accuracy at each query budget. Three ways to choose queries:

- random: pool samples drawn without replacement;
- adaptive: in rounds, the pool samples the current surrogate is least sure about
  (highest predictive entropy), which probes the decision boundaries;
- jacobian: Jacobian-based augmentation (Papernot et al. 2017): a small seed set from the
  pool, then synthetic points stepped along the sign of the surrogate's gradient.

The surrogate is a multinomial logistic regression trained on the answers' full
probabilities (each answer becomes weighted rows, one per class), so rounding or
perturbing probabilities changes what it learns, and label-only answers reduce it to
hard labels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bastion.errors import UsageError
from bastion.findings import Finding, Location, Rule, Severity, Threat, register
from bastion.models.classifier import Classifier, predict
from bastion.serve import harden

STRATEGIES = ("random", "adaptive", "jacobian")
_REFS = ("ML05", "AML.T0024.002")
_RECHECK = "Re-check with `bastion assess extraction --target TARGET --data HELD_OUT`."

COPYABLE = register(Rule(
    "BST-EXT-001", "model-copyable-by-queries",
    "A surrogate trained only on the model's answers agrees with it on most held-out inputs "
    "within the query budget: anyone with query access can copy the model's behaviour "
    "(model theft), then use the copy offline to craft adversarial examples.",
    "Serve the model behind `bastion serve MODEL --output-policy label --monitor block` "
    "and give each client a daily budget (`bastion api-keys create --daily-budget N`); "
    "returning labels instead of probabilities and blocking flagged keys raise the cost of "
    "copying. " + _RECHECK,
    Threat.MODEL_STEALING, Severity.HIGH, _REFS,
))
WEAK_DEFENCE = register(Rule(
    "BST-EXT-002", "output-defence-does-not-slow-copying",
    "An output policy barely lowered the fidelity a copier reached at the full budget: "
    "rounding or perturbing probabilities hides little when the predicted label is what "
    "the copier learns from.",
    "Combine output policies with per-key budgets and the extraction monitor "
    "(`bastion serve --monitor block`); measure again with `bastion assess extraction "
    "--defence POLICY`.",
    Threat.MODEL_STEALING, Severity.LOW, _REFS,
))
UNDETECTED = register(Rule(
    "BST-SRV-001", "extraction-not-stopped-by-gateway",
    "The attack ran through the served endpoint to its full query budget without being "
    "blocked or limited: nothing watches for model stealing at the endpoint.",
    "Put the model behind `bastion serve` with `--monitor block` (PRADA-style detector) and "
    "per-key rate limits and daily budgets (`bastion api-keys create --rate R --daily-budget "
    "N`). " + _RECHECK,
    Threat.MODEL_STEALING, Severity.MEDIUM, _REFS,
))
STOPPED = register(Rule(
    "BST-SRV-002", "extraction-stopped-by-gateway",
    "The served endpoint refused the attack before it reached its budget (monitor block, "
    "rate limit or budget): the gateway's defences engaged.",
    "Nothing to fix; keep the monitor on and review its alerts in the audit log. "
    + _RECHECK,
    Threat.MODEL_STEALING, Severity.INFO, _REFS,
))


@dataclass(frozen=True)
class Checkpoint:
    queries: int
    fidelity: float
    accuracy: float | None


@dataclass
class Run:
    """One attack against one output defence."""

    defence: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    stopped_at: int | None = None  # queries answered when the target refused
    stop_reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "defence": self.defence, "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "checkpoints": [c.__dict__ for c in self.checkpoints],
        }


class _Oracle:
    """Counts answered rows; a refusal ends the attack with what was learned so far."""

    def __init__(self, target: Classifier, policies: tuple[harden.Policy, ...]) -> None:
        self.target = target
        self.policies = policies
        self.used = 0

    def ask(self, x: np.ndarray) -> np.ndarray:
        answer = np.asarray(self.target.predict_proba(x), dtype=np.float64)
        self.used += len(x)
        return harden.apply(self.policies, answer) if self.policies else answer


def _refusal_types() -> tuple[type[BaseException], ...]:
    from bastion.serve.client import QueryRefused

    return (QueryRefused,)


class _Surrogate:
    """Multinomial logistic regression on inputs scaled to [0, 1], trained on soft labels."""

    def __init__(self, n_classes: int, low: float, high: float, seed: int) -> None:
        self.n_classes = n_classes
        self.low, self.span = low, (high - low) or 1.0
        self.seed = seed
        self.model: LogisticRegression | None = None
        self.constant = 0

    def _scale(self, x: np.ndarray) -> np.ndarray:
        return (x.reshape(len(x), -1) - self.low) / self.span

    def fit(self, x: np.ndarray, answers: np.ndarray) -> None:
        rows, labels = np.nonzero(answers > 1e-3)
        weights = answers[rows, labels]
        if len(np.unique(labels)) < 2:
            self.model, self.constant = None, int(labels[0]) if len(labels) else 0
            return
        model = LogisticRegression(max_iter=300, C=10.0, random_state=self.seed)
        # One thread: on problems this small, BLAS threads only fight each other (50x
        # slower on a busy machine).
        with threadpool_limits(limits=1):
            model.fit(self._scale(x)[rows], labels, sample_weight=weights)
        self.model = model

    def proba(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), self.n_classes))
        if self.model is None:
            out[:, self.constant] = 1.0
            return out
        with threadpool_limits(limits=1):
            out[:, self.model.classes_] = self.model.predict_proba(self._scale(x))
        return out

    def input_gradient_sign(self, x: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """sign of d log p(label | x) / dx: for softmax regression, W_label - sum_k p_k W_k."""
        if self.model is None:
            return np.zeros_like(x)
        weights = np.zeros((self.n_classes, x[0].size))
        weights[self.model.classes_] = (
            self.model.coef_ if len(self.model.classes_) > 2
            else np.vstack([-self.model.coef_[0], self.model.coef_[0]])
        )
        p = self.proba(x)
        grad = weights[labels] - p @ weights
        return np.sign(grad).reshape(x.shape)


def _entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1.0)
    return -(q * np.log(q)).sum(axis=1)


def _uniform_pool(target: Classifier, size: int, rng: np.random.Generator) -> np.ndarray:
    if target.input_shape is None:
        raise UsageError("the target does not declare its input shape; give --pool")
    low, high = target.clip_values or (0.0, 1.0)
    return rng.uniform(low, high, size=(size, *target.input_shape))


def attack(
    target: Classifier,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None = None,
    *,
    pool: np.ndarray | None = None,
    budgets: Sequence[int] = (100, 250, 500, 1000),
    strategy: str = "random",
    policies: tuple[harden.Policy, ...] = (),
    target_labels: np.ndarray | None = None,
    rng: np.random.Generator,
) -> Run:
    """Run one extraction attack up to max(budgets) queries, against `target` seen through
    `policies`. `target_labels` are the target's own predictions on `eval_x` (fidelity is
    agreement with them); computed here when not given."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r} (expected {', '.join(STRATEGIES)})")
    budgets = sorted({int(b) for b in budgets})
    if not budgets or budgets[0] < 10:
        raise UsageError("query budgets must be at least 10")
    if pool is None:
        pool = _uniform_pool(target, max(budgets) * (1 if strategy == "random" else 4), rng)
    pool = np.array(pool, dtype=np.float64)  # a copy: the strategies reorder it
    if target_labels is None:
        target_labels = predict(target, eval_x)
    low, high = target.clip_values or (float(pool.min()), float(pool.max()))
    surrogate = _Surrogate(target.n_classes, low, high, int(rng.integers(2**31)))
    oracle = _Oracle(target, policies)
    answered_before = getattr(target, "answered", 0)
    run = Run(defence=" + ".join(str(p) for p in policies) or "none")
    choose = {"random": _random_queries, "adaptive": _adaptive_queries,
              "jacobian": _jacobian_queries}[strategy]
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []

    def score(queries: int) -> None:
        surrogate.fit(np.concatenate(xs), np.concatenate(ys))
        guesses = surrogate.proba(eval_x).argmax(axis=1)
        run.checkpoints.append(Checkpoint(
            queries, float((guesses == target_labels).mean()),
            None if eval_y is None else float((guesses == eval_y).mean()),
        ))

    try:
        for budget in budgets:
            while oracle.used < budget:
                batch = choose(pool, xs, ys, surrogate, budget - oracle.used, rng, low, high)
                if len(batch) == 0:
                    break
                ys.append(oracle.ask(batch))
                xs.append(batch)
            if xs:
                score(oracle.used)
    except _refusal_types() as refused:
        # A remote target counts rows itself, including those of a half-answered request.
        answered = getattr(target, "answered", answered_before + oracle.used)
        run.stopped_at = answered - answered_before
        run.stop_reason = str(refused)
        if xs:
            score(oracle.used)
    return run


def _remaining(pool: np.ndarray, xs: list[np.ndarray]) -> int:
    return len(pool) - sum(len(x) for x in xs)


def _random_queries(pool, xs, ys, surrogate, room, rng, low, high) -> np.ndarray:
    del ys, surrogate, low, high
    start = sum(len(x) for x in xs)
    if start == 0:
        rng.shuffle(pool)  # order the pool once, then walk it
    return pool[start : start + min(room, 50)]


def _adaptive_queries(pool, xs, ys, surrogate, room, rng, low, high) -> np.ndarray:
    """First a random tenth, then the pool points the surrogate is least sure about."""
    del low, high
    asked = sum(len(x) for x in xs)
    if asked == 0:
        pool[:] = pool[rng.permutation(len(pool))]
    if asked < 20 or _remaining(pool, xs) <= 0:
        return pool[asked : asked + min(room, 20, _remaining(pool, xs))]
    surrogate.fit(np.concatenate(xs), np.concatenate(ys))
    rest = pool[asked:]
    order = np.argsort(-_entropy(surrogate.proba(rest)), kind="stable")
    rest[:] = rest[order]  # move the chosen ones to the front of the unasked part
    return pool[asked : asked + min(room, max(20, asked // 4))]


def _jacobian_queries(pool, xs, ys, surrogate, room, rng, low, high) -> np.ndarray:
    """A seed set of 20 pool points, then each earlier query stepped by lambda * sign of
    the surrogate's gradient for the label the target gave it."""
    if not xs:
        return pool[rng.choice(len(pool), size=min(room, 20, len(pool)), replace=False)]
    known = np.concatenate(xs)
    answers = np.concatenate(ys)
    surrogate.fit(known, answers)
    parents = known[-min(len(known), room, 200):]
    labels = answers[-len(parents):].argmax(axis=1)
    step = 0.1 * (high - low)
    return np.clip(parents + step * surrogate.input_gradient_sign(parents, labels), low, high)


def findings(target: str, runs: list[Run], through_gateway: bool,
             high_fidelity: float = 0.9) -> list[Finding]:
    """What the runs mean: copyable, defences that do not help, gateway that did or did not
    stop the attack."""
    out: list[Finding] = []
    location = Location(target)
    baseline = runs[0]
    best = max(baseline.checkpoints, key=lambda c: c.fidelity, default=None)
    if best is not None and best.fidelity >= high_fidelity:
        first = next(c for c in baseline.checkpoints if c.fidelity >= high_fidelity)
        out.append(COPYABLE.finding(
            f"a surrogate agrees with the model on {first.fidelity:.0%} of held-out inputs "
            f"after {first.queries} queries",
            location,
            severity=Severity.HIGH if first.queries <= 1000 else Severity.MEDIUM,
            evidence={"defence": baseline.defence, "queries": first.queries,
                      "fidelity": round(first.fidelity, 4)},
        ))
    for run in runs[1:]:
        if not run.checkpoints or best is None:
            continue
        last = run.checkpoints[-1]
        if last.fidelity >= best.fidelity - 0.05:
            out.append(WEAK_DEFENCE.finding(
                f"output policy {run.defence} leaves fidelity at {last.fidelity:.0%} "
                f"(undefended {best.fidelity:.0%})",
                location,
                evidence={"defence": run.defence, "fidelity": round(last.fidelity, 4),
                          "undefended": round(best.fidelity, 4), "queries": last.queries},
            ))
    if through_gateway:
        if baseline.stopped_at is None:
            out.append(UNDETECTED.finding(
                "the endpoint answered every query of the attack", location,
                evidence={"queries": baseline.checkpoints[-1].queries
                          if baseline.checkpoints else 0},
            ))
        else:
            out.append(STOPPED.finding(
                f"the endpoint refused the attack after {baseline.stopped_at} queries",
                location,
                evidence={"stopped_at": baseline.stopped_at, "reason": baseline.stop_reason},
            ))
    return out


@dataclass
class Assessment:
    runs: list[Run]
    findings: list[Finding]
    eval_queries: int


def assess(
    target: Classifier,
    target_name: str,
    eval_x: np.ndarray,
    eval_y: np.ndarray | None = None,
    *,
    pool: np.ndarray | None = None,
    budgets: Sequence[int] = (100, 250, 500, 1000),
    strategy: str = "random",
    defences: Sequence[harden.Policy] = (),
    through_gateway: bool = False,
    seed: int = 0,
) -> Assessment:
    """The attack without a defence (or as the endpoint serves it), then once per output
    defence, each with the same seed so only the defence differs."""
    before = getattr(target, "answered", 0)
    target_labels = predict(target, eval_x)
    eval_queries = getattr(target, "answered", before) - before
    runs = [
        attack(target, eval_x, eval_y, pool=pool, budgets=budgets, strategy=strategy,
               policies=policies, target_labels=target_labels,
               rng=np.random.default_rng(seed))
        for policies in [(), *[(d,) for d in defences]]
    ]
    if through_gateway:
        runs[0].defence = "as served"
    return Assessment(runs, findings(target_name, runs, through_gateway), eval_queries)


def fidelity_image(runs: Sequence[Run], goal: float | None = None,
                   daily_budget: int | None = None) -> bytes:
    """Fidelity against queries as a PNG, one line per run; the fidelity that counts as a
    copy and a key's daily budget as reference lines when given."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=120)
    axes = figure.subplots()
    for run in runs:
        axes.plot([c.queries for c in run.checkpoints], [c.fidelity for c in run.checkpoints],
                  marker="o", label=run.defence)
    if goal is not None:
        axes.axhline(goal, color="grey", linestyle=":", label=f"copy at {goal:.0%} fidelity")
    if daily_budget:
        axes.axvline(daily_budget, color="firebrick", linestyle="--",
                     label=f"daily budget per key ({daily_budget})")
    axes.set_xscale("log")
    axes.set_xlabel("queries answered")
    axes.set_ylabel("fidelity (agreement with the model)")
    axes.set_ylim(0, 1.02)
    axes.set_title("Model extraction: surrogate fidelity by queries")
    axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
