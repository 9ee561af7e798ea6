"""`bastion demo` builds its example, catches every planted file and flags no real model."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.demo.run import PLANTED


def test_demo_catches_exactly_the_planted_files(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--dir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert f"Planted {len(PLANTED)} malicious files" in result.output
    assert "0 real models flagged" in result.output
    report = json.loads((workdir / "reports" / "scan.json").read_text())
    blocking = {
        Path(f["location"]["path"]).relative_to(workdir).parts[1]
        for f in report["findings"]
        if f["severity"] in ("high", "critical")
    }
    assert blocking == set(PLANTED)
    assert (workdir / "reports" / "scan.sarif").exists()
    assert not (workdir / "PAYLOAD_RAN").exists()
