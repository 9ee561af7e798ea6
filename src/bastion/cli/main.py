"""Entry point: `bastion COMMAND`."""

from __future__ import annotations

import typer

from bastion.cli.assess import assess_app
from bastion.cli.audit import audit_command
from bastion.cli.bom import bom_command
from bastion.cli.card import card_command, datasheet_command
from bastion.cli.data import data_app
from bastion.cli.demo import demo_command
from bastion.cli.deps import deps_command
from bastion.cli.extraction import extraction_command
from bastion.cli.ledger import ledger_app
from bastion.cli.pii import pii_command
from bastion.cli.poisoning import poisoning_command
from bastion.cli.privacy import inversion_command, membership_command
from bastion.cli.scan import scan_command
from bastion.cli.serve import api_keys_app, serve_command
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
app.command("audit")(audit_command)
app.command("sign")(sign_command)
app.command("verify")(verify_command)
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.command("bom")(bom_command)
app.command("deps")(deps_command)
app.command("card")(card_command)
app.command("datasheet")(datasheet_command)
data_app.command("pii")(pii_command)
app.add_typer(data_app, name="data")
assess_app.command("poisoning")(poisoning_command)
assess_app.command("membership")(membership_command)
assess_app.command("inversion")(inversion_command)
assess_app.command("extraction")(extraction_command)
app.command("serve")(serve_command)
app.add_typer(api_keys_app, name="api-keys")
app.add_typer(assess_app, name="assess")


def main() -> None:
    app()
