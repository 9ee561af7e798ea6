"""Entry point: `bastion COMMAND`.

Commands are imported when they are run, not when the program starts: `bastion scan` must
not pay for importing scikit-learn, torch, CycloneDX or FastAPI, which other commands need.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any

import click
import typer
from typer.core import TyperGroup

# name -> (module, attribute): a command function or a Typer sub-app.
COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("bastion.cli.scan", "scan_command"),
    "audit": ("bastion.cli.audit", "audit_command"),
    "demo": ("bastion.cli.demo", "demo_command"),
    "sign": ("bastion.cli.sign", "sign_command"),
    "verify": ("bastion.cli.sign", "verify_command"),
    "keys": ("bastion.cli.sign", "keys_app"),
    "ledger": ("bastion.cli.ledger", "ledger_app"),
    "serve": ("bastion.cli.serve", "serve_command"),
    "api-keys": ("bastion.cli.serve", "api_keys_app"),
    "bom": ("bastion.cli.bom", "bom_command"),
    "deps": ("bastion.cli.deps", "deps_command"),
    "card": ("bastion.cli.card", "card_command"),
    "datasheet": ("bastion.cli.card", "datasheet_command"),
}


@functools.cache  # the sub-commands are added once per process
def assess_group() -> typer.Typer:
    from bastion.cli.assess import assess_app
    from bastion.cli.extraction import extraction_command
    from bastion.cli.poisoning import poisoning_command
    from bastion.cli.privacy import inversion_command, membership_command

    assess_app.command("poisoning")(poisoning_command)
    assess_app.command("membership")(membership_command)
    assess_app.command("inversion")(inversion_command)
    assess_app.command("extraction")(extraction_command)
    return assess_app


@functools.cache
def data_group() -> typer.Typer:
    from bastion.cli.data import data_app
    from bastion.cli.pii import pii_command

    data_app.command("pii")(pii_command)
    return data_app


# Groups whose sub-commands live in several modules.
GROUPS = {"assess": assess_group, "data": data_group}


class LazyGroup(TyperGroup):
    """Lists every command, imports only the one asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *GROUPS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in GROUPS:
            return as_click(cmd_name, GROUPS[cmd_name]())
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attribute = spec
        return as_click(cmd_name, getattr(importlib.import_module(module), attribute))


def as_click(name: str, target: Any) -> click.Command:
    """The click command for a command function or a sub-app, built the way add_typer
    builds it (so a sub-app with one command stays a group: `bastion keys generate`)."""
    holder = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
        holder.callback()(lambda: None)  # a group even with one command, so it keeps its name
    group = typer.main.get_command(holder)
    return group.commands[name]


app = typer.Typer(
    name="bastion",
    cls=LazyGroup,
    help="Secure machine-learning systems end to end: scan, sign, assess, audit, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _bastion() -> None:
    """Secure machine-learning systems end to end: scan, sign, assess, audit, serve."""


def main() -> None:
    app()
