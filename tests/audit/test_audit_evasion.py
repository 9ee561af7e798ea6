"""The `evasion` audit check on a real scikit-learn digits model: a large declared epsilon
breaks it (high, with the robustness curve embedded), a tiny one does not; the command each
finding names reproduces the audit's numbers; bad configurations give one line."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from bastion.audit import CHECK_FAILED, run_audit
from bastion.cli.main import app
from bastion.config import load_config
from bastion.findings import Severity

# Few points and queries keep each audit to a second or two.
QUICK = "points = 30\nbudget = 100\n"


@pytest.fixture(scope="module")
def digits_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A logistic regression on digits (pixels 0..16) and held-out test data as .npz."""
    root = tmp_path_factory.mktemp("evasion")
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1200], order[1200:]
    model = LogisticRegression(max_iter=500).fit(x[train], y[train])
    joblib.dump(model, root / "digits.joblib")
    np.savez(root / "test.npz", x=x[test], y=y[test])
    return root


def _config(root: Path, evasion: str, name: str = "bastion.toml") -> Path:
    path = root / name
    path.write_text('[model]\npath = "digits.joblib"\nclip_values = [0.0, 16.0]\n\n'
                    '[data.test]\npath = "test.npz"\n\n'
                    f"[threat_model.evasion]\n{evasion}")
    return path


def _audit(config: Path, out: Path):
    result = run_audit(load_config(config), out=out, only=["evasion"], jobs=1, seed=3)
    return result, result.outcome("evasion")


def test_weak_model_at_a_large_epsilon_is_high_with_the_curve(digits_project: Path,
                                                             tmp_path: Path) -> None:
    config = _config(digits_project, f"eps = [1.0, 4.0]\ndeclared_eps = 4.0\n{QUICK}",
                     "weak.toml")
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    metrics = outcome.result.metrics
    assert metrics["attacks"] == ["square"]  # auto: gradient-free attacks for scikit-learn
    assert metrics["points"] == 30 and metrics["declared_eps"] == 4.0
    assert metrics["clean_accuracy"] >= 0.85
    robust = metrics["robust_accuracy"]
    assert robust["4.0"] < 0.5 and robust["4.0"] <= robust["1.0"] <= metrics["clean_accuracy"]
    (finding,) = [f for f in result.findings if f.rule_id == "BST-EVA-001"]
    assert finding.severity is Severity.HIGH
    assert finding.evidence["eps"] == 4.0
    assert finding.location.path == str(digits_project / "digits.joblib")
    assert "`bastion assess evasion --model digits.joblib --data test.npz --eps 1,4 " \
           "--declared-eps 4 --norm inf --attacks auto" in finding.remediation
    assert "eps=4)" in finding.remediation and "`bastion audit --only evasion`" in \
        finding.remediation
    assert not result.passed
    (plot,) = outcome.result.plots
    assert plot.media_type == "image/png" and plot.data.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_curve_is_embedded_in_the_html_report(digits_project: Path, tmp_path: Path) -> None:
    config = _config(digits_project, f"eps = 4.0\n{QUICK}", "html.toml")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", "--config", str(config), "--out", str(out),
                                      "--only", "evasion", "--format", "html,json"])
    assert result.exit_code == 1, result.output  # the high finding fails the gate
    html = (out / "audit.html").read_text()
    assert "Robustness curve" in html and "data:image/png;base64," in html
    document = json.loads((out / "audit.json").read_text())
    check = document["metrics"]["checks"]["evasion"]
    assert check["status"] == "ran" and set(check["metrics"]["robust_accuracy"]) == {"4.0"}
    assert document["metrics"]["scores"]["adversarial-examples"]["score"] == 65  # one high


def test_tiny_epsilon_is_not_high(digits_project: Path, tmp_path: Path) -> None:
    config = _config(digits_project, f"eps = 0.01\n{QUICK}", "tiny.toml")
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    (finding,) = result.findings
    assert finding.rule_id == "BST-EVA-001" and finding.severity is Severity.LOW
    assert outcome.result.metrics["robust_accuracy"]["0.01"] == \
        outcome.result.metrics["clean_accuracy"]
    assert outcome.result.metrics["unbounded_check"]["robust_accuracy"] == 0.0  # not masked
    assert result.passed


def test_the_named_command_reproduces_the_audit(digits_project: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(digits_project, f"eps = [0.5, 2.0]\n{QUICK}", "again.toml")
    _, outcome = _audit(config, tmp_path / "out")
    command = outcome.result.metrics["recheck"].split()
    assert command[:3] == ["bastion", "assess", "evasion"] and "--seed" in command
    monkeypatch.chdir(digits_project)  # the command is written for the project folder
    report = tmp_path / "again.json"
    result = CliRunner().invoke(app, [*command[1:], "--format", "json", "--out", str(report)])
    assert result.exit_code in (0, 1), result.output
    again = json.loads(report.read_text())["metrics"]
    assert again["robust_accuracy"] == outcome.result.metrics["robust_accuracy"]


def test_not_applicable_without_test_data(digits_project: Path, tmp_path: Path) -> None:
    path = digits_project / "notest.toml"
    path.write_text('[model]\npath = "digits.joblib"\n[threat_model.evasion]\neps = 1.0\n')
    result = run_audit(load_config(path), out=tmp_path, only=["evasion", "scan"], jobs=1)
    assert result.outcome("evasion").status == "not applicable"


def test_white_box_attack_on_a_gradient_free_model_is_a_one_line_error(
    digits_project: Path, tmp_path: Path
) -> None:
    config = _config(digits_project, f'eps = 1.0\nattacks = ["pgd", "square"]\n{QUICK}',
                     "pgd.toml")
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "error"
    assert outcome.error == (
        f"{config}: threat_model.evasion.attacks: pgd need gradients, which the model "
        "(SklearnClassifier) does not give; use attacks = [\"square\"] or [\"hopskipjump\"] "
        "(black-box), or \"auto\""
    )
    (finding,) = result.findings
    assert finding.rule_id == CHECK_FAILED.rule_id and "\n" not in finding.title


@pytest.mark.parametrize(
    ("evasion", "message"),
    [
        ("eps = 0\n", "threat_model.evasion.eps: every epsilon must be a positive number "
         "(got 0.0)"),
        ("eps = [0.5, -1]\n", "threat_model.evasion.eps: every epsilon must be a positive "
         "number (got -1.0)"),
        ('eps = 1\nattacks = ["deepfool"]\n', "threat_model.evasion.attacks[0]: Input should be "
         "'fgsm', 'pgd', 'apgd-ce', 'apgd-dlr', 'apgd-t', 'fab-t', 'square', 'hopskipjump' "
         "or 'auto' (got 'deepfool')"),
        ('eps = 1\nnorm = "l1"\n', "threat_model.evasion.norm: Input should be 'linf' or 'l2'"),
        ("eps = [1, 2]\ndeclared_eps = 3\n", "threat_model.evasion: declared_eps 3.0 must be "
         "one of eps [1.0, 2.0]"),
        ("eps = 1\npoints = 0\n", "threat_model.evasion.points: Input should be greater than 0"),
    ],
)
def test_bad_evasion_config_exits_2_with_one_line(digits_project: Path, tmp_path: Path,
                                                 evasion: str, message: str) -> None:
    config = _config(digits_project, evasion, "bad.toml")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["audit", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 2
    assert f"{config}: {message}" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


NETWORK = '''
import torch


def build():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                               torch.nn.Linear(32, 10))
'''


def test_torch_factory_model_gets_the_white_box_sequence(tmp_path: Path) -> None:
    """A state_dict with the network's code beside bastion.toml, rows reshaped to the declared
    input shape; `auto` runs APGD-CE, APGD-T and Square, and the curve shows no masking."""
    import torch

    (tmp_path / "evasion_net.py").write_text(NETWORK)
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                              torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    features, labels = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    for _ in range(25):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(features), labels).backward()
        optimiser.step()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    np.savez(tmp_path / "test.npz", x=x[1200:], y=y[1200:])
    config = tmp_path / "bastion.toml"
    config.write_text(
        '[model]\npath = "net.pt"\nfactory = "evasion_net:build"\ninput_shape = [1, 8, 8]\n'
        'clip_values = [0.0, 1.0]\n[data.test]\npath = "test.npz"\n'
        "[threat_model.evasion]\neps = [0.03, 0.3]\npoints = 20\nsteps = 10\nbudget = 50\n"
    )
    result, outcome = _audit(config, tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    metrics = outcome.result.metrics
    assert metrics["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert metrics["robust_accuracy"]["0.3"] < metrics["robust_accuracy"]["0.03"]
    assert metrics["unbounded_check"]["robust_accuracy"] == 0.0
    assert {f.rule_id for f in result.findings} == {"BST-EVA-001"}  # no masking warning
    assert "--model-factory evasion_net:build" in metrics["recheck"]
    assert str(tmp_path) not in __import__("sys").path  # the project folder is not left behind
