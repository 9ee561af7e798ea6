"""The command line imports a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from bastion.cli.main import COMMANDS, GROUPS, app

HEAVY = ("sklearn", "torch", "cyclonedx", "fastapi", "ray", "cleanlab", "opacus")


def test_scan_does_not_import_what_other_commands_need(tmp_path) -> None:
    (tmp_path / "weights.npy").write_bytes(b"\x93NUMPY\x01\x00v\x00" + b" " * 117 + b"\n")
    probe = (
        "import sys\n"
        "from bastion.cli.main import main\n"
        f"sys.argv = ['bastion', 'scan', {str(tmp_path)!r}, '--format', 'json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert output.stdout.strip().splitlines()[-1] == "[]", output.stderr


def test_every_command_and_group_loads_and_has_help() -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["--help"])
    assert listing.exit_code == 0
    for name in [*COMMANDS, *GROUPS]:
        assert name in listing.output
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
    assert runner.invoke(app, ["assess", "membership", "--help"]).exit_code == 0
    unknown = runner.invoke(app, ["nosuch"])
    assert unknown.exit_code == 2 and "No such command" in unknown.output
