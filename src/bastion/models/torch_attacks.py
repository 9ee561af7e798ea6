"""Gradient attacks computed tensor-native on a `TorchClassifier`'s device.

The attacks in `bastion.assess.evasion` stay framework-free; this module is their torch
backend. Each attack moves one batch to the device once, runs every step there through
`TorchClassifier.logits`, and hands back a numpy array at the end: no per-step round trips.
While it runs, the module's parameters stop requiring gradients, so backward computes only
the input gradient (the weight gradients an attack does not need are never formed).

Steps project in float32 on the device; the caller applies the exact projection
(`bastion.assess.evasion.constraints.project`) to the final result.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from bastion.models.torch_classifier import TorchClassifier

Target = torch.Tensor | None
LossFn = Callable[[torch.Tensor, torch.Tensor, Target], torch.Tensor]


@dataclass
class Box:
    """The constraints on the device: clean inputs, valid range, mutable features."""

    x: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    mutable: torch.Tensor | None
    eps: float
    norm: str
    # Linf without immutable features: the ball and the box meet in one per-coordinate
    # interval, so a projection is a single clamp.
    floor: torch.Tensor | None = None
    ceiling: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.norm == "inf" and self.mutable is None and self.floor is None:
            self.floor = torch.maximum(_within(self.x, -self.eps), self.lower)
            self.ceiling = torch.minimum(_within(self.x, self.eps), self.upper)

    def subset(self, keep: torch.Tensor) -> Box:
        """The box of the rows numbered in `keep`."""
        return Box(
            self.x.index_select(0, keep), self.lower, self.upper, self.mutable, self.eps,
            self.norm, None if self.floor is None else self.floor.index_select(0, keep),
            None if self.ceiling is None else self.ceiling.index_select(0, keep),
        )

    def project(self, x_adv: torch.Tensor) -> torch.Tensor:
        if self.floor is not None:
            return torch.clamp(x_adv, self.floor, self.ceiling)
        delta = x_adv - self.x
        if self.mutable is not None:
            delta = delta * self.mutable
        if self.norm == "inf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            lengths = _row_norms(delta)
            delta = delta * torch.clamp(self.eps / lengths.clamp_min(1e-12), max=1.0)
        return torch.maximum(torch.minimum(self.x + delta, self.upper), self.lower)

    def step(self, x_adv: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        """`x_adv` moved `size` along the steepest-ascent direction of `grad`, projected. Takes
        `grad` over: a Linf step without immutable features signs it in place and clamps the
        sum in place, three passes over the batch instead of five."""
        if self.floor is None:
            return self.project(x_adv + size * self.direction(grad))
        return torch.add(x_adv, grad.sign_(), alpha=size).clamp_(self.floor, self.ceiling)

    def direction(self, grad: torch.Tensor) -> torch.Tensor:
        """The steepest-ascent direction of unit norm (sign for Linf)."""
        if self.mutable is not None:
            grad = grad * self.mutable
        if self.norm == "inf":
            return grad.sign()
        return grad / _row_norms(grad).clamp_min(1e-12)

    def random_start(self, generator: torch.Generator, on_sphere: bool = False) -> torch.Tensor:
        """A random point in the ball (on its surface when `on_sphere`), projected."""
        shape, device = self.x.shape, self.x.device
        if self.norm == "inf":
            noise = torch.rand(shape, generator=generator, device=device) * 2 - 1
            if on_sphere:
                noise = noise / _row_max(noise).clamp_min(1e-12)
            return self.project(self.x + self.eps * noise)
        noise = torch.randn(shape, generator=generator, device=device)
        noise = noise / _row_norms(noise).clamp_min(1e-12)
        if not on_sphere:
            radius = torch.rand((len(self.x),) + (1,) * (self.x.dim() - 1), generator=generator,
                                device=device)
            noise = noise * radius
        return self.project(self.x + self.eps * noise)


def _within(x: torch.Tensor, offset: float) -> torch.Tensor:
    """x + offset in x's dtype, rounded toward x where rounding to nearest would land outside
    the exact ball (as `constraints.project` rounds): a point clamped to it is already where
    the exact projection puts it, so the model's verdict on it during the attack stands.
    Worked out in float64 on the CPU (not every device has float64), once per batch."""
    here = x.detach().cpu()
    near = (here.double() + offset).to(x.dtype)
    beyond = (near.double() - here.double()).abs() > abs(offset)
    return torch.where(beyond, torch.nextafter(near, here), near).to(x.device)


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _row_max(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).abs().amax(dim=1).view(-1, *([1] * (t.dim() - 1)))


def _per_row(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


# Losses: per-sample values the attack ascends. `target` is only used by targeted losses.


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, target: Target) -> torch.Tensor:
    return functional.cross_entropy(logits, y, reduction="none")


def dlr(logits: torch.Tensor, y: torch.Tensor, target: Target) -> torch.Tensor:
    """Difference of logits ratio (Croce & Hein 2020): shift- and scale-invariant margin."""
    ranked, _ = logits.sort(dim=1, descending=True)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], -math.inf)
    runner_up = others.amax(dim=1)
    spread = ranked[:, 0] - ranked[:, min(2, ranked.shape[1] - 1)] if ranked.shape[1] > 2 else 1.0
    return -(true - runner_up) / (spread + 1e-12)


def targeted_dlr(logits: torch.Tensor, y: torch.Tensor, target: Target) -> torch.Tensor:
    """The targeted DLR loss; with fewer than four classes its denominator falls back to the
    spread that exists (top minus third, or 1 for two classes)."""
    assert target is not None
    ranked, _ = logits.sort(dim=1, descending=True)
    k = ranked.shape[1]
    if k >= 4:
        spread = ranked[:, 0] - (ranked[:, 2] + ranked[:, 3]) / 2
    elif k == 3:
        spread = ranked[:, 0] - ranked[:, 2]
    else:
        spread = torch.ones_like(ranked[:, 0])
    true = logits.gather(1, y[:, None]).squeeze(1)
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    return -(true - wanted) / (spread + 1e-12)


def target_margin(logits: torch.Tensor, y: torch.Tensor, target: Target) -> torch.Tensor:
    """Target logit minus true logit: FAB-T's decision boundary is where this is zero."""
    assert target is not None
    return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)


LOSSES: dict[str, LossFn] = {"ce": cross_entropy, "dlr": dlr, "dlr-targeted": targeted_dlr}


@contextmanager
def input_gradients_only(module: nn.Module) -> Iterator[None]:
    """Parameters stop requiring gradients for the duration, then are restored exactly."""
    frozen = [p for p in module.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)


def hookable(module: nn.Module) -> bool:
    """False for TorchScript, which takes no forward hooks (its modules keep their layout and
    its passes their batch size)."""
    return not any(isinstance(m, torch.jit.ScriptModule) for m in module.modules())


@contextmanager
def channels_last(module: nn.Module, images: bool) -> Iterator[None]:
    """For image batches, 4-d weights (convolution kernels) are stored channels-last for the
    duration, then the original tensors are put back. oneDNN's convolutions and max-pooling
    run several times faster in that layout, and a one-channel input cannot ask for it by
    itself (its strides read as both layouts), so the weights have to (and `Passes` gives
    such an input channels-last strides, for the first convolution's sake). The gradient flowing
    back into a channels-last output is given that layout too: one that arrives in the other
    (from a Flatten, say) sends max-pooling's backward down a path that converts everything."""
    convert = images and hookable(module)
    kernels = [p for p in module.parameters() if p.dim() == 4] if convert else []
    originals = [p.data for p in kernels]
    hooks = [m.register_forward_hook(_gradient_in_output_layout)
             for m in module.modules() if kernels and next(m.children(), None) is None]
    for parameter in kernels:
        parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for parameter, original in zip(kernels, originals, strict=True):
            parameter.data = original


def _gradient_in_output_layout(_module: nn.Module, _inputs: object, output: object) -> None:
    if (isinstance(output, torch.Tensor) and output.requires_grad and output.dim() == 4
            and output.is_contiguous(memory_format=torch.channels_last)):
        output.register_hook(_as_channels_last)


def _as_channels_last(grad: torch.Tensor) -> torch.Tensor:
    return grad.contiguous(memory_format=torch.channels_last)


@contextmanager
def prepared(clf: TorchClassifier, input_dims: int) -> Iterator[None]:
    """The module set up for attacking inputs of `input_dims` dimensions (batch included):
    input gradients only, image kernels channels-last. Nests safely."""
    with input_gradients_only(clf.module), channels_last(clf.module, input_dims == 4):
        yield


class _Rows:
    """Per-point attack state. A point the model already misclassifies is done: its iterate
    is recorded and its row dropped, so later steps only pay for points still standing."""

    def __init__(self, box: Box, **tensors: torch.Tensor | None) -> None:
        self.box = box
        self.index = torch.arange(len(box.x), device=box.x.device)
        self.__dict__.update(tensors)

    def drop(self, done: torch.Tensor, x_adv: torch.Tensor, result: torch.Tensor,
             found: torch.Tensor, fooled: torch.Tensor | None = None) -> bool:
        """Record the done rows' `x_adv` in `result`, drop them; False once none remain.
        `found` marks the done rows that are `fooled` (all of them unless given)."""
        # row numbers, found once, rather than a mask that every tensor would search again
        finished, keep = done.nonzero().squeeze(1), (~done).nonzero().squeeze(1)
        rows = self.index.index_select(0, finished)
        result.index_copy_(0, rows, x_adv.detach().index_select(0, finished))
        found.index_fill_(0, rows if fooled is None else rows[fooled[finished]], True)
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.index_select(0, keep))
        self.box = self.box.subset(keep)
        return len(self.index) > 0


# On a CPU a forward and backward pass runs fastest while its activations stay in the cache;
# past that, the memory-bound layers (ReLU, pooling and their backward) slow down per row.
CPU_PASS_BYTES = 8 * 2**20


# activation bytes per row, by module and input shape: probed once, forgotten with the module
_PROBED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], int]] = (
    weakref.WeakKeyDictionary()
)


def _activation_bytes(clf: TorchClassifier, one_row: torch.Tensor) -> int:
    """Bytes of every leaf module's output for one input row."""
    total = 0

    def count(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal total
        if isinstance(output, torch.Tensor):
            total += output.numel() * output.element_size()

    leaves = [m for m in clf.module.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            clf.logits(one_row)
    finally:
        for hook in hooks:
            hook.remove()
    return total


@dataclass(frozen=True)
class Passes:
    """Passes through the classifier, at most `rows` rows at a time: a step over many rows
    runs as several cache-sized passes (on a GPU, one pass of the whole batch)."""

    clf: TorchClassifier
    rows: int
    # One-channel images for a module whose kernels `channels_last` converted: such a batch
    # reads as both layouts, so torch takes the default one and runs the first convolution
    # in it (its kernels, with one input channel, read as both too), converting the output
    # for the next layer in every forward and backward pass. The same memory viewed with
    # channels-last strides keeps the whole network channels-last.
    one_channel_last: bool = False

    @classmethod
    def build(cls, clf: TorchClassifier, one_row: torch.Tensor) -> Passes:
        hooks = hookable(clf.module)  # else `channels_last` left the kernels as they were
        one_channel_last = (
            hooks and one_row.dim() == 4 and one_row.shape[1] == 1
            and any(p.dim() == 4 for p in clf.module.parameters())
        )
        if clf.device.type != "cpu" or not hooks:
            return cls(clf, clf.batch_size, one_channel_last)
        probed = _PROBED.setdefault(clf.module, {})
        shape = tuple(one_row.shape)
        if shape not in probed:
            probed[shape] = max(_activation_bytes(clf, one_row), 1)
        return cls(clf, max(32, CPU_PASS_BYTES // probed[shape]), one_channel_last)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.one_channel_last or not x.is_contiguous():
            return x
        _, _, height, width = x.shape
        return x.as_strided(x.shape, (height * width, 1, width, 1))

    def _slices(self, n: int) -> list[slice]:
        parts = -(-n // self.rows)
        size = -(-n // parts) if parts else 1
        return [slice(start, start + size) for start in range(0, n, size)]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits without a graph."""
        with torch.no_grad():
            return torch.cat(
                [self.clf.logits(self._input(x[part])) for part in self._slices(len(x))]
            )

    def loss_and_grad(
        self, x_adv: torch.Tensor, y: torch.Tensor, loss: LossFn, target: Target,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-row loss, its gradient with respect to the input, and the logits."""
        parts = [
            self._one_pass(x_adv[part], y[part], loss, None if target is None else target[part])
            for part in self._slices(len(x_adv))
        ]
        if len(parts) == 1:
            return parts[0]
        values, grads, logits = zip(*parts, strict=True)
        return torch.cat(values), torch.cat(grads), torch.cat(logits)

    def _one_pass(
        self, x_adv: torch.Tensor, y: torch.Tensor, loss: LossFn, target: Target,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_adv = self._input(x_adv.detach()).requires_grad_(True)
        with torch.enable_grad():
            logits = self.clf.logits(x_adv)
            if loss is cross_entropy:
                values, upstream = _cross_entropy_and_logit_grad(logits.detach(), y)
                (grad,) = torch.autograd.grad(logits, x_adv, upstream)
            else:
                values = loss(logits, y, target)
                (grad,) = torch.autograd.grad(values.sum(), x_adv)
        return values.detach(), grad, logits.detach()


def _cross_entropy_and_logit_grad(
    logits: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy and its gradient with respect to the logits (softmax minus the
    one-hot label), in closed form. On a CPU, torch's log-softmax and its backward over rows
    of a few classes take several times as long as these few elementwise operations: about a
    tenth of a PGD step on a small model."""
    top = logits.amax(dim=1, keepdim=True)
    exp = (logits - top).exp_()
    total = exp.sum(dim=1, keepdim=True)
    values = (total.log() + top).squeeze(1) - logits.gather(1, y[:, None]).squeeze(1)
    upstream = exp.div_(total)
    upstream.scatter_add_(1, y[:, None], torch.full_like(total, -1.0))
    return values, upstream


def _fooled(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1) != y


# The attacks. Each takes one batch already on the device and returns (x_adv, found): the
# first misclassified iterate where there is one, else the attack's final (or best) point.


def fgsm_batch(model: Passes, box: Box, y: torch.Tensor) -> torch.Tensor:
    _, grad, _ = model.loss_and_grad(box.x, y, cross_entropy, None)
    return box.project(box.x + box.eps * box.direction(grad))


def pgd_batch(
    model: Passes, box: Box, y: torch.Tensor, *, steps: int, step_size: float,
    random_start: bool, generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Madry et al.'s projected gradient ascent on the cross-entropy, one restart: the
    iterates and the points found fooled. The model classified every returned iterate.

    A point whose iterates repeat ends early: one whose step leaves it exactly where it was
    (each coordinate pushed against a bound it already touches), or takes it back to where
    it was one step before (coordinates whose gradient flips sign each step, the rest at a
    bound). The iteration is deterministic, so every later step would repeat the cycle: the
    point ends at the iterate the remaining steps would leave it at, still classified
    correctly (each point of the cycle was), and those steps are not computed. On a small
    MLP nine in ten of the points that resist enter such a cycle within 20 steps."""
    start = box.random_start(generator) if random_start else box.x.clone()
    result = start.clone()
    found = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    rows = _Rows(box, x=start, y=y, before=None)
    for k in range(steps):
        _, grad, logits = model.loss_and_grad(rows.x, rows.y, cross_entropy, None)
        done = _fooled(logits, rows.y)
        x = rows.x
        with torch.no_grad():  # every row steps, then the ended ones drop
            rows.x = rows.box.step(x, grad, step_size)
            ended = done | _same_rows(rows.x, x)
            back = None if rows.before is None else _same_rows(rows.x, rows.before) & ~ended
            rows.before = x
            # the last of the remaining steps lands on the new point when their number is
            # odd, for a two-step cycle; every other ended row keeps the point it had
            last = x
            if back is not None and back.any():
                ended |= back
                if (steps - k) % 2 == 1:
                    last = torch.where(_per_row(back, x), rows.x, x)
        if ended.any() and not rows.drop(ended, last, result, found, fooled=done):
            return result, found
    result[rows.index] = rows.x
    with torch.no_grad():
        found[rows.index[_fooled(model.logits(rows.x), rows.y)]] = True
    return result, found


def _same_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per row, whether no coordinate differs (a max of differences: several times faster
    than all() over the equality mask)."""
    return (a - b).abs_().flatten(1).amax(dim=1) == 0


def apgd_checkpoints(steps: int) -> set[int]:
    """Iterations where APGD decides whether to halve its step: p0 = 0, p1 = 0.22,
    p(j+1) = p(j) + max(p(j) - p(j-1) - 0.03, 0.06)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return {math.ceil(round(p * steps, 9)) for p in fractions[1:] if p < 1} - {0}


def apgd_batch(
    model: Passes, box: Box, y: torch.Tensor, *, steps: int, loss: LossFn,
    generator: torch.Generator, target: Target = None,
    rho: float = 0.75, momentum: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Auto-PGD (Croce & Hein 2020), one restart: momentum 0.75, step 2*eps halved at the
    checkpoints when the loss rose in fewer than rho of the steps since the previous one, or
    when the step was kept last time and the best loss has not improved; a halving restarts
    the point from its best iterate."""
    checkpoints = apgd_checkpoints(steps)
    start = box.random_start(generator, on_sphere=True)
    values, grad, logits = model.loss_and_grad(start, y, loss, target)
    result = start.clone()
    found = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    s = _Rows(
        box, x=start, y=y, target=target, grad=grad, loss=values, current=values,
        step=torch.full_like(_per_row(values, start), 2 * box.eps),
        previous=start.clone(), best_x=start.clone(), best_grad=grad.clone(),
        best_loss=values.clone(), rises=torch.zeros_like(values),
        loss_at_check=values.clone(), reduced_at_check=torch.ones_like(values, dtype=torch.bool),
    )
    done = _fooled(logits, y)
    if done.any() and not s.drop(done, s.x, result, found):
        return result, found
    last_check = 0
    for k in range(steps):
        with torch.no_grad():
            candidate = s.box.project(s.x + s.step * s.box.direction(s.grad))
            weight = momentum if k > 0 else 1.0
            moved = s.x + weight * (candidate - s.x) + (1 - weight) * (s.x - s.previous)
            s.previous, s.x = s.x, s.box.project(moved)
        s.current, s.grad, logits = model.loss_and_grad(s.x, s.y, loss, s.target)
        done = _fooled(logits, s.y)
        if done.any() and not s.drop(done, s.x, result, found):
            return result, found
        with torch.no_grad():
            s.rises += (s.current > s.loss).float()
            s.loss = s.current
            improved = s.current > s.best_loss
            s.best_x[improved], s.best_grad[improved] = s.x[improved], s.grad[improved]
            s.best_loss = torch.where(improved, s.current, s.best_loss)
            if k + 1 in checkpoints:
                stalled = s.rises < rho * (k + 1 - last_check)
                flat = ~s.reduced_at_check & (s.best_loss <= s.loss_at_check)
                reduce = stalled | flat
                s.step[reduce] /= 2
                s.x[reduce], s.grad[reduce] = s.best_x[reduce], s.best_grad[reduce]
                s.previous[reduce] = s.best_x[reduce]
                s.reduced_at_check, s.loss_at_check = reduce, s.best_loss.clone()
                s.rises.zero_()
                last_check = k + 1
    result[s.index] = s.best_x
    return result, found

def hyperplane_step(
    w: torch.Tensor, need: torch.Tensor, up: torch.Tensor, down: torch.Tensor, norm: str,
) -> torch.Tensor:
    """Row by row (flat rows), the step d of least Linf or L2 norm with w.d = need and
    -down <= d <= up: the projection onto a hyperplane within a box that FAB makes at every
    iteration. Where the box does not reach the hyperplane, every coordinate goes to its bound.

    The optimum moves coordinate i by min(tau * speed_i, room_i) toward the side that raises
    w.d, for one scalar tau (speed 1 for Linf, |w_i| for L2). w.d is then piecewise linear
    and increasing in tau with a kink where a coordinate reaches its bound, so sorting those
    kinks finds tau exactly."""
    toward = torch.sign(w) * torch.sign(need)[:, None]
    moving = toward != 0
    size = torch.where(moving, w.abs(), 0.0)
    room = torch.where(moving, torch.where(toward > 0, up, down), 0.0)
    speed = moving.float() if norm == "inf" else size
    inf = torch.tensor(math.inf, device=w.device)
    saturates_at = torch.where(speed > 0, room / speed.clamp_min(1e-30), inf)
    kinks, order = saturates_at.sort(dim=1)
    gain = torch.where(speed > 0, size * room, 0.0).gather(1, order)  # w.d once saturated
    rate = (size * speed).gather(1, order)  # d(w.d)/d(tau) while not saturated
    gained = gain.cumsum(1)
    rest = (rate.sum(1, keepdim=True) - rate.cumsum(1)).clamp_min(0)
    reach = gained + torch.where(rest > 0, kinks * rest, 0.0)  # w.d at tau = each kink
    target = need.abs()
    first = (reach < target[:, None]).sum(1)  # the segment where w.d reaches the target
    cols = w.shape[1]
    before = (first - 1).clamp_min(0)[:, None]
    started = first > 0
    gained_before = torch.where(started, gained.gather(1, before).squeeze(1), 0.0)
    rate_after = torch.where(started, rest.gather(1, before).squeeze(1), rate.sum(1))
    low = torch.where(started, kinks.gather(1, before).squeeze(1), 0.0)
    high = kinks.gather(1, first.clamp_max(cols - 1)[:, None]).squeeze(1)
    tau = (target - gained_before) / rate_after.clamp_min(1e-30)
    tau = torch.maximum(torch.minimum(tau, high), low)
    tau = torch.where(first >= cols, inf, tau)
    moved = torch.where(speed > 0, torch.minimum(tau[:, None] * speed, room), 0.0)
    return toward * moved


def _norms(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.flatten(1)
    return flat.abs().amax(dim=1) if norm == "inf" else flat.norm(dim=1)


def _fab_step(
    box: Box, x: torch.Tensor, margin: torch.Tensor, grad: torch.Tensor, *,
    alpha_max: float, eta: float,
) -> torch.Tensor:
    """One FAB iteration: linearise the boundary at x, project both x and the clean point
    onto it within the box, and move to a mix of the two projections, overshooting by eta.
    The clean point's weight alpha grows with how far x's own projection is, capped at
    alpha_max: that bias toward the clean point is what keeps the perturbation small."""
    if box.mutable is not None:
        grad = grad * box.mutable
    n, clean = len(x), box.x
    w = grad.flatten(1)
    need_here = -margin
    need_clean = -(margin + (w * (clean - x).flatten(1)).sum(1))
    steps = hyperplane_step(
        torch.cat([w, w]), torch.cat([need_here, need_clean]),
        torch.cat([(box.upper - x).flatten(1), (box.upper - clean).flatten(1)]),
        torch.cat([(x - box.lower).flatten(1), (clean - box.lower).flatten(1)]),
        box.norm,
    ).view(2 * n, *x.shape[1:])
    here, from_clean = steps[:n], steps[n:]
    far = _norms(here, box.norm)
    alpha = torch.clamp(far / (far + _norms(from_clean, box.norm)).clamp_min(1e-12),
                        max=alpha_max)
    alpha = _per_row(alpha, x)
    moved = (1 - alpha) * (x + eta * here) + alpha * (clean + eta * from_clean)
    return torch.maximum(torch.minimum(moved, box.upper), box.lower)


def fab_batch(
    model: Passes, box: Box, y: torch.Tensor, target: torch.Tensor, *, steps: int,
    from_clean: bool, generator: torch.Generator, alpha_max: float = 0.1, eta: float = 1.05,
    beta: float = 0.9,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targeted Fast Adaptive Boundary attack (Croce & Hein 2020), one restart, toward the
    boundary between the true and the `target` class. An iterate that is misclassified is
    pulled back toward the clean point (x0 + beta (x - x0)). FAB minimises the perturbation;
    here a point is done once it has an adversarial input inside the eps-ball, the only thing
    a robustness evaluation asks of it. Starts at the clean point, or (later restarts) at a
    random point of the ball of half the radius."""
    if from_clean:
        start = box.x.clone()
    else:
        half = Box(box.x, box.lower, box.upper, box.mutable, box.eps / 2, box.norm)
        start = half.random_start(generator)
    result = box.x.clone()
    found = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    s = _Rows(box, x=start, y=y, target=target)
    for _ in range(steps):
        margin, grad, _ = model.loss_and_grad(s.x, s.y, target_margin, s.target)
        with torch.no_grad():
            s.candidate = _fab_step(s.box, s.x, margin, grad, alpha_max=alpha_max, eta=eta)
            s.fooled = _fooled(model.logits(s.candidate), s.y)
            done = s.fooled & (_norms(s.candidate - s.box.x, s.box.norm) <= s.box.eps)
            if done.any() and not s.drop(done, s.candidate, result, found):
                return result, found
            pulled_back = s.box.x + beta * (s.candidate - s.box.x)
            s.x = torch.where(_per_row(s.fooled, s.candidate), pulled_back, s.candidate)
    return result, found


# Numpy in, numpy out: chunked by the classifier's batch size, restarts only on the points
# that are still classified correctly.


@dataclass(frozen=True)
class Verdicts:
    """Per input, whether the attack saw the model classify exactly that input (`seen`), and
    whether it saw it misclassified (`fooled`, within `seen`); False where it did not look,
    as for FGSM's single step or a final iterate nobody classified."""

    seen: np.ndarray
    fooled: np.ndarray


@dataclass(frozen=True)
class Bounds:
    lower: np.ndarray
    upper: np.ndarray
    mutable: np.ndarray | None


def run(
    clf: TorchClassifier,
    x: np.ndarray,
    y: np.ndarray,
    *,
    eps: float,
    norm: str,
    bounds: Bounds,
    attack: str,
    seed: int,
    restarts: int = 1,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    loss: str = "ce",
    targets: np.ndarray | None = None,
) -> tuple[np.ndarray, Verdicts]:
    """Run `attack` (fgsm, pgd, apgd or fab) on numpy inputs; returns the adversarial
    inputs and what the attack itself saw the model make of exactly those inputs."""
    device = clf.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    lower = torch.as_tensor(bounds.lower, dtype=torch.float32, device=device)
    upper = torch.as_tensor(bounds.upper, dtype=torch.float32, device=device)
    mutable = (
        None if bounds.mutable is None
        else torch.as_tensor(bounds.mutable, dtype=torch.float32, device=device)
    )
    out = np.array(x, dtype=np.float32, copy=True)
    verdicts = Verdicts(np.zeros(len(x), dtype=bool), np.zeros(len(x), dtype=bool))
    with prepared(clf, x.ndim):
        model = Passes.build(clf, clf.to_tensor(x[:1]))
        for start in range(0, len(x), clf.batch_size):
            stop = start + clf.batch_size
            clean = clf.to_tensor(x[start:stop])
            labels = torch.as_tensor(y[start:stop], dtype=torch.long, device=device)
            wanted = (
                None if targets is None
                else torch.as_tensor(targets[start:stop], dtype=torch.long, device=device)
            )
            box = Box(clean, lower, upper, mutable, eps, norm)
            adv, fooled, seen = _attack_chunk(
                model, box, labels, attack=attack, generator=generator, restarts=restarts,
                steps=steps, step_size=step_size, random_start=random_start,
                loss=LOSSES[loss], target=wanted,
            )
            out[start:stop] = adv.cpu().numpy()
            verdicts.seen[start:stop] = seen.cpu().numpy()
            verdicts.fooled[start:stop] = fooled.cpu().numpy()
    return out, verdicts


def _attack_chunk(
    model: Passes, box: Box, y: torch.Tensor, *, attack: str,
    generator: torch.Generator, restarts: int, steps: int, step_size: float | None,
    random_start: bool, loss: LossFn, target: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The adversarial inputs, and which of them the attack saw the model misclassify and
    which it saw classified at all (the attacks that stop a point only when it is fooled
    see only those)."""
    fooled = torch.zeros(len(y), dtype=torch.bool, device=y.device)
    seen = torch.zeros_like(fooled)
    if attack == "fgsm":
        return fgsm_batch(model, box, y), fooled, seen
    result = box.x.clone()
    remaining = torch.arange(len(y), device=y.device)
    for restart in range(restarts):
        sub = box.subset(remaining)
        sub_target = None if target is None else target[remaining]
        if attack == "fab":
            assert sub_target is not None
            adv, found = fab_batch(
                model, sub, y[remaining], sub_target, steps=steps, from_clean=restart == 0,
                generator=generator,
            )
            classified = found
        elif attack == "pgd":
            adv, found = pgd_batch(
                model, sub, y[remaining], steps=steps,
                step_size=step_size or 2.5 * box.eps / steps,
                random_start=random_start, generator=generator,
            )
            classified = torch.ones_like(found)
        else:
            adv, found = apgd_batch(
                model, sub, y[remaining], steps=steps, loss=loss, generator=generator,
                target=sub_target,
            )
            classified = found
        result[remaining] = adv
        fooled[remaining[found]] = True
        seen[remaining] = classified
        remaining = remaining[~found]
        if len(remaining) == 0:
            break
    return result, fooled, seen
