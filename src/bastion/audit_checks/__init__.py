"""The checks `bastion audit` runs, one module each.

A check module defines `CHECK = Check(...)`: its name, the threats it covers, when it applies
to a configuration, and a `run(config, ctx) -> CheckResult` function. Adding a check is adding
one module to this package; `registry()` finds every module here that defines `CHECK`.
Modules whose name starts with an underscore are helpers, not checks.

Checks compute and never render: they return findings, metrics, plots (image bytes) and the
artifacts they looked at, and the report renderers lay those out.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from bastion.findings import Finding, Threat

if TYPE_CHECKING:
    from bastion.config import AuditConfig

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Plot:
    """An image a check made (PNG or SVG bytes); the HTML report embeds it."""

    title: str
    media_type: str
    data: bytes
    caption: str = ""

    def __post_init__(self) -> None:
        if self.media_type not in ("image/png", "image/svg+xml"):
            raise ValueError(f"plot {self.title!r}: media type must be PNG or SVG")


@dataclass
class CheckResult:
    findings: list[Finding] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    plots: list[Plot] = field(default_factory=list)
    artifacts: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class CheckContext:
    """What a running check may use besides the configuration.

    `out` is a folder of its own for files it writes; `seed` seeds every random choice;
    `ray` says the check itself runs as a Ray task, so `map` fans work out (the reference
    models of an attack, say) as further Ray tasks instead of running it in-process.
    """

    out: Path
    seed: int = 0
    ray: bool = False

    def rng(self, salt: int = 0) -> Any:
        import numpy as np

        return np.random.default_rng([self.seed, salt])

    def map(self, func: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`[func(item) for item in items]`, as parallel Ray tasks under `--ray`."""
        items = list(items)
        if not self.ray:
            return [func(item) for item in items]
        import ray

        remote = ray.remote(_apply)
        return ray.get([remote.remote(func, item) for item in items])


def _apply(func: Callable[[T], R], item: T) -> R:
    """The Ray task behind `CheckContext.map` (any callable, builtins included)."""
    return func(item)


@dataclass(frozen=True)
class Check:
    """One audit check. `run` must be a module-level function so the check can run in
    another process or on a Ray worker."""

    name: str
    title: str
    threats: tuple[Threat, ...]
    applies: Callable[[AuditConfig], bool]
    run: Callable[[AuditConfig, CheckContext], CheckResult]


def registry() -> dict[str, Check]:
    """Every check in this package, by name."""
    checks: dict[str, Check] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        check = getattr(module, "CHECK", None)
        if isinstance(check, Check):
            if check.name in checks:
                raise ValueError(f"two audit checks are named {check.name!r}")
            checks[check.name] = check
    return checks
