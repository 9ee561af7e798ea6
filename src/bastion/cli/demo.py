"""`bastion demo`: build the example project and audit it."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from bastion.cli.common import friendly_errors


@friendly_errors
def demo_command(
    workdir: Annotated[
        str, typer.Option("--dir", help="Where to build the example (replaced if present).")
    ] = "bastion-demo",
    fix: Annotated[
        bool, typer.Option("--fix", help="Then apply every fix and audit again (gate passes).")
    ] = False,
    ray: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Option("--ray", help="Run the audit's checks on Ray ('local', 'auto' or ADDRESS)."),
    ] = None,
    jobs: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--jobs", "-j", help="Checks run at once (default: all cores)."),
    ] = None,
) -> None:
    """Build an example model project with planted problems (a poisoned training slice,
    malicious downloads, an unsigned model, a permissive serving config), audit it with
    live progress and check that exactly the planted problems were found."""
    from bastion.demo.run import run_demo

    raise typer.Exit(run_demo(workdir, ray=ray, jobs=jobs, fix=fix))
