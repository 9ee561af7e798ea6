"""`bastion demo`: build the example project and scan it."""

from __future__ import annotations

from typing import Annotated

import typer

from bastion.cli.common import friendly_errors


@friendly_errors
def demo_command(
    workdir: Annotated[
        str, typer.Option("--dir", help="Where to build the example.")
    ] = "bastion-demo",
) -> None:
    """Build an example folder of real and malicious model files and scan it."""
    from bastion.demo.run import run_demo

    raise typer.Exit(run_demo(workdir))
