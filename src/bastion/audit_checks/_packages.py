"""The project's Python packages as `[supply_chain]` declares them, shared by the `bom` and
`deps` checks (a helper module, not a check)."""

from __future__ import annotations

import shlex
from pathlib import Path

from bastion.config import AuditConfig
from bastion.supplychain.pydeps import PackageSet, from_environment, from_lock, from_requirements


def package_file(config: AuditConfig) -> Path | None:
    """The requirements or lock file that lists the packages; None: the environment."""
    declared = config.supply_chain.requirements or config.supply_chain.lock
    return config.resolve(declared) if declared else None


def packages(config: AuditConfig) -> PackageSet:
    """The declared requirements or lock file, else the environment Bastion runs in."""
    supply = config.supply_chain
    if supply.requirements:
        return from_requirements(config.resolve(supply.requirements))
    if supply.lock:
        return from_lock(config.resolve(supply.lock))
    return from_environment()


def shown(config: AuditConfig, path: Path) -> str:
    """A path as the user would type it in the project folder (where bastion.toml is)."""
    try:
        return shlex.quote(str(path.relative_to(config.root)))
    except ValueError:
        return shlex.quote(str(path))
