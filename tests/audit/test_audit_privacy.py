"""The privacy checks of `bastion audit`: `pii` finds planted personal data, `membership` an
overfit model, `inversion` a model that leaks a sensitive column or whose classes MIFace
reconstructs; each is quiet on a clean project and says clearly what is wrong otherwise."""

from __future__ import annotations

import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from bastion.audit import CHECK_FAILED, run_audit
from bastion.audit_checks.membership import policy
from bastion.config import load_config, parse_config
from bastion.data.pii.entities import luhn_valid
from bastion.errors import InputError
from bastion.findings import Severity

N = 150  # members and as many non-members: enough for TPR at 1% FPR to count


def _project(root: Path, model, train: pd.DataFrame, test: pd.DataFrame | None,
             threat_model: str) -> Path:
    """A project folder: model file, data tables and a bastion.toml."""
    joblib.dump(model, root / "model.joblib")
    train.to_csv(root / "train.csv", index=False)
    text = '[model]\npath = "model.joblib"\n[data.train]\npath = "train.csv"\nlabel = "label"\n'
    if test is not None:
        test.to_csv(root / "test.csv", index=False)
        text += '[data.test]\npath = "test.csv"\nlabel = "label"\n'
    config = root / "bastion.toml"
    config.write_text(text + threat_model)
    return config


def _table(x: np.ndarray, y: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(x, columns=names or [f"f{i}" for i in range(x.shape[1])])
    frame["label"] = y
    return frame


def _audit(config: Path, check: str, out: Path):
    result = run_audit(load_config(config), out=out, only=[check], jobs=1)
    outcome = result.outcome(check)
    return result, outcome


# --- pii ---------------------------------------------------------------------------------


def _card(rng: np.random.Generator) -> str:
    body = "4" + "".join(map(str, rng.integers(0, 10, 14)))
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


def test_pii_finds_planted_emails_and_cards_and_is_quiet_on_clean_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame({
        "age": rng.integers(18, 90, n),
        "contact": [f"person{i}@example.org" for i in range(n)],
        "card": [_card(rng) for _ in range(n)],
        "label": rng.integers(0, 2, n),
    })
    frame.to_csv(tmp_path / "train.csv", index=False)
    clean = frame[["age", "label"]]
    clean.to_csv(tmp_path / "test.csv", index=False)
    (tmp_path / "bastion.toml").write_text(
        '[data.train]\npath = "train.csv"\nlabel = "label"\n'
        '[data.test]\npath = "test.csv"\nlabel = "label"\n')
    result, outcome = _audit(tmp_path / "bastion.toml", "pii", tmp_path / "out")
    assert outcome.status == "ran"
    found = {(f.rule_id, f.location.member, f.severity, f.evidence["matches"])
             for f in result.findings}
    assert found == {("BST-PRIV-013", "contact", Severity.MEDIUM, n),
                     ("BST-PRIV-010", "card", Severity.HIGH, n)}
    card = next(f for f in result.findings if f.rule_id == "BST-PRIV-010")
    assert card.location.path == str(tmp_path / "train.csv")
    assert f"`bastion data pii {tmp_path / 'train.csv'}`" in card.remediation
    assert not result.passed  # a card number in the training data fails the default gate
    assert outcome.result.metrics["files"][str(tmp_path / "test.csv")]["columns"] == {}


def test_pii_does_not_apply_to_arrays_and_names_a_bad_table(tmp_path: Path) -> None:
    np.savez(tmp_path / "train.npz", x=np.zeros((4, 2)), y=np.zeros(4))
    (tmp_path / "bastion.toml").write_text('[data.train]\npath = "train.npz"\n[serving]\n')
    result = run_audit(load_config(tmp_path / "bastion.toml"), out=tmp_path / "o", jobs=1)
    assert result.outcome("pii").status == "not applicable"
    (tmp_path / "bad.csv").write_bytes(b'a,b\n"unterminated,1\n')
    (tmp_path / "bastion.toml").write_text('[data.train]\npath = "bad.csv"\n')
    result, outcome = _audit(tmp_path / "bastion.toml", "pii", tmp_path / "o")
    assert outcome.status == "error"
    assert outcome.error.startswith(f"{tmp_path / 'bad.csv'}: not a readable CSV file")
    assert [f.rule_id for f in result.findings] == [CHECK_FAILED.rule_id]


# --- membership --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def membership_data():
    x, y = make_classification(n_samples=2 * N, n_features=8, n_informative=5, n_classes=3,
                               flip_y=0.15, random_state=0)
    return _table(x[:N], y[:N]), _table(x[N:], y[N:])


def test_membership_finds_an_overfit_model(tmp_path: Path, membership_data) -> None:
    train, test = membership_data
    memorises = RandomForestClassifier(n_estimators=50, random_state=0, n_jobs=1).fit(
        train.drop(columns="label").values, train["label"])
    config = _project(tmp_path, memorises, train, test,
                      "[threat_model.membership]\nreferences = 4\n")
    result, outcome = _audit(config, "membership", tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    (finding,) = result.findings
    assert finding.rule_id == "BST-PRIV-001" and finding.severity is Severity.HIGH
    assert finding.location.path == str(tmp_path / "model.joblib")
    assert finding.references == ("ML04", "AML.T0024.000")
    assert (f"`bastion assess membership --model {tmp_path / 'model.joblib'} --data "
            f"{tmp_path / 'train.csv'} --nonmembers {tmp_path / 'test.csv'} --label label "
            "--attack rmia --references 4`") in finding.remediation
    assert "`bastion audit --only membership`" in finding.remediation
    metrics = outcome.result.metrics
    assert metrics["references"] == 4 and metrics["attacks"][0]["attack"] == "rmia-offline"
    assert metrics["attacks"][0]["auc"] >= 0.75
    (plot,) = outcome.result.plots
    assert plot.media_type == "image/png" and plot.data[:4] == b"\x89PNG"
    assert not result.passed


def test_membership_is_quiet_on_a_model_that_generalises(tmp_path: Path,
                                                         membership_data) -> None:
    train, test = membership_data
    smooth = LogisticRegression(C=0.05).fit(train.drop(columns="label").values, train["label"])
    config = _project(tmp_path, smooth, train, test,
                      '[threat_model.membership]\nattack = "lira"\nreferences = 2\n'
                      "query_budget = 240\n")
    result, outcome = _audit(config, "membership", tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    assert [f for f in result.findings if f.severity >= Severity.MEDIUM] == []
    metrics = outcome.result.metrics
    assert (metrics["members"], metrics["nonmembers"]) == (120, 120)  # the query budget
    assert metrics["attacks"][0]["attack"] == "lira-offline"
    assert result.passed


def test_membership_trains_references_with_the_declared_function(tmp_path: Path,
                                                                  membership_data) -> None:
    train, test = membership_data
    model = LogisticRegression(C=0.05).fit(train.drop(columns="label").values, train["label"])
    (tmp_path / "trainers.py").write_text(
        "from sklearn.linear_model import LogisticRegression\n\n\n"
        "def smooth(x, y, seed):\n    return LogisticRegression(C=0.05).fit(x, y)\n\n\n"
        "def broken(x, y, seed):\n    raise RuntimeError('no GPU here')\n")
    config = _project(tmp_path, model, train, test,
                      '[threat_model.membership]\nattack = "lira-online"\nreferences = 2\n'
                      'train_fn = "trainers:broken"\n')
    _, outcome = _audit(config, "membership", tmp_path / "out")
    assert outcome.status == "error"
    assert outcome.error.startswith("reference model 0: the training function raised "
                                    "RuntimeError: no GPU here")
    config.write_text(config.read_text().replace("trainers:broken", "trainers:smooth"))
    result, outcome = _audit(config, "membership", tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    assert outcome.result.metrics["attacks"][0]["attack"] == "lira-online"
    assert [f for f in result.findings if f.severity >= Severity.MEDIUM] == []


def test_declared_limits_are_the_policys_high_rungs() -> None:
    strict = policy(parse_config({"threat_model": {"membership": {
        "max_auc": 0.58, "max_tpr_at_1pct_fpr": 0.03}}}, ".").threat_model.membership)
    assert strict.auc == ((Severity.HIGH, 0.58), (Severity.LOW, 0.55))
    assert strict.tpr_at_1pct_fpr == ((Severity.HIGH, 0.03), (Severity.LOW, 0.02))
    default = policy(parse_config({"threat_model": {"membership": {}}}, ".")
                     .threat_model.membership)
    assert default.auc == ((Severity.HIGH, 0.75), (Severity.MEDIUM, 0.60), (Severity.LOW, 0.55))


def test_too_few_records_for_the_references_is_one_clear_error(tmp_path: Path) -> None:
    x, y = make_classification(n_samples=24, n_features=4, n_informative=3, n_redundant=0,
                               n_classes=2, random_state=1)
    model = LogisticRegression().fit(x[:12], y[:12])
    config = _project(tmp_path, model, _table(x[:12], y[:12]), _table(x[12:], y[12:]),
                      "[threat_model.membership]\nreferences = 16\n")
    result, outcome = _audit(config, "membership", tmp_path / "out")
    assert outcome.status == "error"
    assert outcome.error.startswith("too few records for 16 reference models")
    assert outcome.error.endswith("lower [threat_model.membership] references (or raise "
                                  "query_budget) or declare more training and test data")
    assert [f.rule_id for f in result.findings] == [CHECK_FAILED.rule_id]


def test_offline_rmia_with_too_few_references_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as error:
        parse_config({"threat_model": {"membership": {"references": 2}}}, tmp_path)
    assert str(error.value) == ("bastion.toml: threat_model.membership: attack 'rmia' needs at "
                                "least 4 reference models (references = 2)")


# --- inversion ---------------------------------------------------------------------------

COLUMNS = ["age", "income", "hiv_status", "zip", "visits"]


def _sensitive_data(seed: int, leaks: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, 5))
    x[:, 2] = rng.integers(0, 2, len(x))
    if leaks:
        y = (x[:, 0] + 1.5 * x[:, 2] + 0.5 * rng.normal(size=len(x)) > 0.75).astype(int)
    else:
        y = (x[:, 0] > 0).astype(int)
    return _table(x, y, COLUMNS)


def test_inversion_finds_a_model_that_leaks_a_sensitive_column(tmp_path: Path) -> None:
    train = _sensitive_data(0, leaks=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = MLPClassifier((32,), max_iter=600, random_state=0).fit(
            train[COLUMNS].values, train["label"])
    config = _project(tmp_path, model, train, None,
                      '[threat_model.inversion]\nsensitive = "hiv_status"\n')
    result, outcome = _audit(config, "inversion", tmp_path / "out")
    assert outcome.status == "ran", outcome.error
    (finding,) = result.findings
    assert finding.rule_id == "BST-PRIV-002" and finding.severity is Severity.HIGH
    assert "'hiv_status'" in finding.title
    assert "--sensitive hiv_status`" in finding.remediation
    assert outcome.result.metrics["attribute_inference"]["advantage"] >= 0.15


def test_inversion_is_quiet_when_the_model_ignores_the_column(tmp_path: Path) -> None:
    train = _sensitive_data(1, leaks=False)
    model = LogisticRegression().fit(train[COLUMNS].values, train["label"])
    config = _project(tmp_path, model, train, None,
                      '[threat_model.inversion]\nsensitive = "hiv_status"\n')
    result, outcome = _audit(config, "inversion", tmp_path / "out")
    assert outcome.status == "ran" and result.findings == []


def test_inversion_applies_only_when_declared_and_names_what_is_wrong(tmp_path: Path) -> None:
    train = _sensitive_data(2, leaks=False)
    model = LogisticRegression().fit(train[COLUMNS].values, train["label"])
    config = _project(tmp_path, model, train, None, "")
    result = run_audit(load_config(config), out=tmp_path / "o", only=["inversion", "scan"])
    assert result.outcome("inversion").status == "not applicable"
    with pytest.raises(InputError, match="name a sensitive column"):
        parse_config({"threat_model": {"inversion": {}}}, tmp_path)
    config.write_text(config.read_text() + '[threat_model.inversion]\nsensitive = "ssn"\n')
    _, outcome = _audit(config, "inversion", tmp_path / "o")
    assert outcome.error == ("no sensitive column 'ssn' (columns: age, income, hiv_status, zip, "
                             "visits)")
    config.write_text(config.read_text().replace('sensitive = "ssn"', "reconstruct = true"))
    _, outcome = _audit(config, "inversion", tmp_path / "o")
    assert outcome.status == "error" and "needs gradients" in outcome.error


def test_miface_on_a_torch_model_from_its_factory(tmp_path: Path) -> None:
    import torch
    from sklearn.datasets import load_digits

    (tmp_path / "digitsnet.py").write_text(
        "from torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))\n")
    digits = load_digits()
    x, y = (digits.data[:600] / 16.0).astype(np.float32), digits.target[:600]
    torch.manual_seed(0)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from torch import nn

        net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(150):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(torch.as_tensor(x)), torch.as_tensor(y)).backward()
            optimizer.step()
        torch.save(net.state_dict(), tmp_path / "net.pt")
        _table(x, y).to_csv(tmp_path / "train.csv", index=False)
        (tmp_path / "bastion.toml").write_text(
            '[model]\npath = "net.pt"\nfactory = "digitsnet:build"\ninput_shape = [64]\n'
            'clip_values = [0.0, 1.0]\n[data.train]\npath = "train.csv"\nlabel = "label"\n'
            "[threat_model.inversion]\nreconstruct = true\nsteps = 100\n")
        result, outcome = _audit(tmp_path / "bastion.toml", "inversion", tmp_path / "out")
        (tmp_path / "bastion.toml").write_text(
            (tmp_path / "bastion.toml").read_text() + '[data.test]\npath = "train.csv"\n'
            'label = "label"\n[threat_model.membership]\n')
        _, membership = _audit(tmp_path / "bastion.toml", "membership", tmp_path / "out")
    finally:
        torch.set_num_threads(previous)
    assert outcome.status == "ran", outcome.error
    reconstruction = outcome.result.metrics["reconstruction"]
    assert reconstruction["classes"] == list(range(10))
    assert reconstruction["identified_fraction"] >= 0.5
    assert {f.rule_id for f in result.findings} == {"BST-PRIV-003"}
    (plot,) = outcome.result.plots
    assert plot.data[:4] == b"\x89PNG" and "MIFace" in plot.caption
    assert membership.error == ("threat_model.membership.train_fn: reference models for a "
                                "torch model need a training function (module:function taking "
                                "x, y, seed and returning a trained model)")
