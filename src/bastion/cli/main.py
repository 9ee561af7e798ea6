"""Entry point: `bastion COMMAND`."""

from __future__ import annotations

import typer

from bastion.cli.data import data_app
from bastion.cli.demo import demo_command
from bastion.cli.ledger import ledger_app
from bastion.cli.poisoning import poisoning_command
from bastion.cli.scan import scan_command
from bastion.cli.sign import keys_app, sign_command, verify_command

app = typer.Typer(
    name="bastion",
    help="Secure machine-learning systems end to end: scan, sign, assess, audit, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("scan")(scan_command)
app.command("demo")(demo_command)
app.command("sign")(sign_command)
app.command("verify")(verify_command)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.add_typer(data_app, name="data")
# `assess` is shared with other assessments; this group holds poisoning until they merge.
assess_app = typer.Typer(help="Red-team assessments of a model.", no_args_is_help=True)
assess_app.command("poisoning")(poisoning_command)
app.add_typer(assess_app, name="assess")


def main() -> None:
    app()
