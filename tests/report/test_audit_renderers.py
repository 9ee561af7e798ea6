"""The audit's HTML and Markdown renderers: hostile text from a scanned file stays text, and
a huge audit still fits a pull-request comment."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.audit import run_audit
from bastion.audit_checks.serving import NO_TLS
from bastion.config import parse_config
from bastion.findings import Location
from bastion.report.html import to_html
from bastion.report.markdown import MAX_CHARS, to_markdown

HOSTILE = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def result(tmp_path: Path):
    config = parse_config({"serving": {}}, tmp_path)
    return run_audit(config, out=tmp_path / "out", jobs=1)


def test_html_escapes_everything_a_finding_carries(result, tmp_path: Path) -> None:
    result.findings.append(NO_TLS.finding(
        f"Title {HOSTILE}", Location(str(tmp_path / f"{HOSTILE}.pkl"), HOSTILE),
        evidence={"global": HOSTILE},
        remediation=f"Run `bastion scan {HOSTILE}` then {HOSTILE}",
    ))
    html = to_html(result, f"bastion audit {HOSTILE}")
    assert "<script>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(" in html
    assert "<code>bastion scan &lt;script&gt;" in html  # code spans are made after escaping
    assert html.count("<img ") == 1  # only the score chart


def test_markdown_cells_cannot_break_the_table(result, tmp_path: Path) -> None:
    result.findings.append(NO_TLS.finding("a | b\nc", Location(str(tmp_path / "x|y.pkl"))))
    text = to_markdown(result, "bastion audit")
    row = next(line for line in text.splitlines() if "a \\| b c" in line)
    assert row.count(" | ") == 4  # five cells, the pipes in the text escaped


def test_markdown_fits_a_pull_request_comment(result, tmp_path: Path) -> None:
    for i in range(3000):
        result.findings.append(NO_TLS.finding(f"finding {i}", Location(str(tmp_path / f"{i}"))))
    text = to_markdown(result, "bastion audit", report_link="audit.html")
    assert len(text) < MAX_CHARS + 200
    assert text.rstrip().endswith("the HTML and JSON reports have every finding.")
