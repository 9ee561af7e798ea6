"""`bastion card` and `bastion datasheet` on the demo assets (the `demo` fixture in
tests/govern/conftest.py): golden files, no invented content, HTML escaping, ledger
verification and recording, and one-line errors for bad input.

Golden files live in tests/govern/golden/. After an intended change to the documents,
regenerate them with

    BASTION_UPDATE_GOLDEN=1 PYTHONPATH=src python -m pytest tests/govern/test_card.py

and review the diff. Comparison is after normalising what varies from run to run: the
temporary folder, digests (the pickle's bytes depend on the scikit-learn version), the
model's size and the checkpoint's signing time."""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.data.composition import measure
from bastion.govern.ledger import Ledger

Demo = Any  # the demo fixture's dataclass, defined in conftest.py

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("BASTION_UPDATE_GOLDEN") == "1"
runner = CliRunner()


def normalise(text: str, demo) -> str:
    text = text.replace(str(demo.root), "<demo>")
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    text = re.sub(r"\b[0-9a-f]{12}\b", "<sha256-prefix>", text)
    text = re.sub(r"\(\d+ bytes\)", "(<size> bytes)", text)
    return re.sub(r"(checkpoint at size \d+) \([^)]*Z\)", r"\1 (<time>)", text)


def check_golden(name: str, text: str, demo) -> None:
    path = GOLDEN / name
    normalised = normalise(text, demo)
    if UPDATE:
        path.write_text(normalised, encoding="utf-8")
    assert path.exists(), f"missing golden file {path}; run with BASTION_UPDATE_GOLDEN=1"
    assert normalised == path.read_text(encoding="utf-8")


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_card_golden(demo, tmp_path: Path) -> None:
    result = invoke("card", "-m", str(demo.model), "--ledger", str(demo.ledger), "--results",
                    str(demo.results), "--user", str(demo.card_yaml), "-o", str(tmp_path),
                    "--no-record")
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "digits.card.md").read_text("utf-8")
    html = (tmp_path / "digits.card.html").read_text("utf-8")
    check_golden("card.md", markdown, demo)
    check_golden("card.html", html, demo)
    # Hugging Face front matter: YAML between --- lines with the metrics in model-index.
    front = yaml.safe_load(markdown.split("---\n")[1])
    assert front["license"] == "apache-2.0" and front["tags"] == ["bastion", "vision", "demo"]
    metrics = front["model-index"][0]["results"][0]["metrics"]
    assert {m["type"]: m["value"] for m in metrics} == {"clean_accuracy": 0.9875,
                                                        "robust_accuracy": 0.3125}
    assert "| digits.csv |" in markdown  # training data named from the ledger
    assert "verified with ledger.db.pub" in markdown


def test_datasheet_golden(demo, tmp_path: Path) -> None:
    out = tmp_path / "sheet.md"
    result = invoke("datasheet", "-d", str(demo.data), "--label", "digit", "--ledger",
                    str(demo.ledger), "--findings", str(demo.findings), "--user",
                    str(demo.datasheet_yaml), "-o", str(out), "--no-record")
    assert result.exit_code == 0, result.output
    check_golden("datasheet.md", out.read_text("utf-8"), demo)
    html = tmp_path / "sheet.html"
    result = invoke("datasheet", "-d", str(demo.data), "--label", "digit", "--ledger",
                    str(demo.ledger), "--findings", str(demo.findings), "--user",
                    str(demo.datasheet_yaml), "-o", str(html), "--no-record")
    assert result.exit_code == 0, result.output
    check_golden("datasheet.html", html.read_text("utf-8"), demo)


def test_card_without_inputs_invents_nothing(demo, tmp_path: Path) -> None:
    out = tmp_path / "card.md"
    assert invoke("card", "-m", str(demo.model), "-o", str(out)).exit_code == 0
    text = out.read_text("utf-8")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front == {"tags": ["bastion"]}  # no license, no metrics
    for key in ("version", "license", "owners", "description", "task", "limitations",
                "intended_use.primary_uses", "human_oversight", "risk_management"):
        assert f"Not provided: add `{key}` to card.yaml" in text, key
    assert "Not provided: record the model's history" in text
    assert "Not provided: run Bastion's assessments" in text


def test_datasheet_without_inputs_invents_nothing(demo, tmp_path: Path) -> None:
    out = tmp_path / "sheet.md"
    assert invoke("datasheet", "-d", str(demo.data), "-o", str(out)).exit_code == 0
    text = out.read_text("utf-8")
    assert "- **Classes:** _Not provided: name the class column with `--label COLUMN`_" in text
    assert "Not provided: record changes with `bastion ledger append" in text
    assert "Not provided: run Bastion's PII and poisoning checks" in text
    for key in ("owners", "license", "motivation.purpose", "uses.not_recommended",
                "maintenance.retention"):
        assert f"Not provided: add `{key}` to datasheet.yaml" in text, key
    assert "- **Missing values:** 2 cell(s) in 1 of 65 column(s)" in text  # measured anyway


def test_html_escapes_user_text(demo, tmp_path: Path) -> None:
    card_yaml = tmp_path / "card.yaml"
    card_yaml.write_text('description: "<script>alert(1)</script> & <b>bold</b>"\n')
    out = tmp_path / "card.html"
    assert invoke("card", "-m", str(demo.model), "--user", str(card_yaml), "-o",
                  str(out)).exit_code == 0
    html = out.read_text("utf-8")
    assert "<script>" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html


def test_documents_are_recorded_in_the_ledger(demo, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    for suffix in ("", ".key", ".pub"):
        Path(f"{ledger}{suffix}").write_bytes(Path(f"{demo.ledger}{suffix}").read_bytes())
    result = invoke("card", "-m", str(demo.model), "--ledger", str(ledger), "-o",
                    str(tmp_path / "docs"))
    assert result.exit_code == 0, result.output
    with Ledger.open(ledger) as opened:
        (event,) = (e.event for e in opened.find("document"))
        lineage = [e.event["kind"] for e in opened.lineage(event["parents"][0])]
    assert event["details"] == {"document": "model-card"}
    assert sorted(s["name"] for s in event["subjects"]) == ["digits.card.html",
                                                            "digits.card.md"]
    assert "document" in lineage  # the card joins the model's lineage


def test_tampered_ledger_is_refused(demo, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.db"
    for suffix in ("", ".pub"):
        Path(f"{ledger}{suffix}").write_bytes(Path(f"{demo.ledger}{suffix}").read_bytes())
    db = sqlite3.connect(ledger)
    db.execute("DROP TRIGGER entries_append_only_update")
    db.execute("UPDATE entries SET body = replace(body, 'ben', 'eve') WHERE idx = 2")
    db.commit()
    db.close()
    out = tmp_path / "card.md"
    result = invoke("card", "-m", str(demo.model), "--ledger", str(ledger), "-o", str(out))
    assert result.exit_code == 2
    assert "fails verification" in result.output and "entry 2" in result.output
    assert not out.exists()


def test_bad_input_exits_2_with_one_line(demo, tmp_path: Path) -> None:
    files = {
        "broken.yaml": "name: [unclosed\n",
        "typo.yaml": "intended_use:\n  primary_usrs: [x]\n",
        "type.yaml": "approach: magic\n",
        "list.yaml": "- just\n- a list\n",
        "sheet.yaml": "motivation:\n  why: because\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    model, data = str(demo.model), str(demo.data)
    out = str(tmp_path / "out.md")
    cases = {
        "no such model file": ["card", "-m", str(tmp_path / "none.pt"), "-o", out],
        "malformed YAML at line 2": ["card", "-m", model, "--user",
                                     str(tmp_path / "broken.yaml"), "-o", out],
        "unknown key 'intended_use.primary_usrs' (allowed here: primary_uses, primary_users,"
        " out_of_scope)": ["card", "-m", model, "--user", str(tmp_path / "typo.yaml"),
                           "-o", out],
        "approach: Input should be 'supervised'": ["card", "-m", model, "--user",
                                                   str(tmp_path / "type.yaml"), "-o", out],
        "the top level must be a mapping": ["card", "-m", model, "--user",
                                            str(tmp_path / "list.yaml"), "-o", out],
        "unknown key 'motivation.why'": ["datasheet", "-d", data, "--user",
                                         str(tmp_path / "sheet.yaml"), "-o", out],
        "unknown --format 'pdf'": ["card", "-m", model, "-o", str(tmp_path), "-f", "pdf"],
        "is a .md file but --format asks for html": ["card", "-m", model, "-o", out,
                                                      "-f", "html"],
        "give a folder or a file ending in .md or .html": ["card", "-m", model, "-o",
                                                           str(tmp_path / "card.txt")],
        "no label column 'nope'": ["datasheet", "-d", data, "--label", "nope", "-o", out],
        "no such data file": ["datasheet", "-d", str(tmp_path / "none.csv"), "-o", out],
        "no ledger at": ["card", "-m", model, "--ledger", str(tmp_path / "none.db"),
                         "-o", out],
        "not a JSON report": ["card", "-m", model, "--results",
                              str(tmp_path / "broken.yaml"), "-o", out],
    }
    for message, args in cases.items():
        result = invoke(*args)
        assert result.exit_code == 2, (message, result.output)
        assert message in result.output, (message, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not Path(out).exists()


def test_composition_of_arrays(tmp_path: Path) -> None:
    x = np.arange(24, dtype=float).reshape(6, 2, 2)
    x[1, 0, 1] = x[4, 0, 1] = x[5, 1, 1] = np.nan
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 0, 0, 0, 1, 2]))
    comp = measure(tmp_path / "d.npz")
    assert (comp.rows, comp.features, comp.feature_shape) == (6, 4, (2, 2))
    assert comp.missing == {"x[1]": 2, "x[3]": 1}
    assert [(c.label, c.count) for c in comp.classes] == [("0", 4), ("1", 1), ("2", 1)]
    assert comp.imbalance_ratio == 4.0
    assert comp.balance_entropy == pytest.approx(
        -(4 / 6 * np.log(4 / 6) + 2 / 6 * np.log(1 / 6)) / np.log(3))
