"""`bastion assess evasion` through the real command line: real model files, formats, plot,
ledger, tabular constraints, and one clear line with exit code 2 for bad input."""

from __future__ import annotations

import json
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn
from typer.testing import CliRunner

from bastion.cli.main import app

runner = CliRunner()
FAST = ["--steps", "5", "--budget", "40", "--points", "30", "--seed", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evasion-cli")
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    optimiser = torch.optim.Adam(module.parameters(), lr=1e-2)
    for _ in range(60):
        optimiser.zero_grad()
        nn.functional.cross_entropy(module(torch.tensor(x[:800])), torch.tensor(y[:800])).backward()
        optimiser.step()
    with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module.eval()).save(str(folder / "mlp.pt"))
    np.savez(folder / "digits.npz", x=x[1000:1100], y=y[1000:1100])
    np.savez(folder / "wide.npz", x=x[:5, :32], y=y[:5])
    np.savez(folder / "text.npz", x=np.array([["a"] * 64] * 5), y=np.zeros(5, np.int64))
    np.savez(folder / "labels.npz", x=x[:5], y=np.array([3, 10, 11, 12, 1]))
    joblib.dump(LogisticRegression(max_iter=100).fit(x[:500], y[:500]), folder / "logreg.joblib")
    cancer = load_breast_cancer(as_frame=True)
    features = cancer.data / cancer.data.max()
    model = LogisticRegression(max_iter=500, C=10).fit(features.to_numpy(), cancer.target)
    joblib.dump(model,
                folder / "cancer.joblib")
    features.assign(target=cancer.target).to_csv(folder / "cancer.csv", index=False)
    (folder / "ranges.json").write_text(json.dumps({"mean radius": [0.2, 0.9]}))
    return folder


def _invoke(*args: str):
    return runner.invoke(app, ["assess", "evasion", *args])


def test_torchscript_model_json_plot_and_ledger(files, tmp_path) -> None:
    assert runner.invoke(app, ["ledger", "init", str(tmp_path / "l.db")]).exit_code == 0
    plot = tmp_path / "curve.svg"
    result = _invoke(
        "--model", str(files / "mlp.pt"), "--data", str(files / "digits.npz"),
        "--eps", "0.03,0.15", "--format", "json", "--plot", str(plot),
        "--ledger", str(tmp_path / "l.db"), "--declared-eps", "0.15", *FAST,
    )
    assert result.exit_code == 1, result.output  # robust accuracy at 0.15 is below the floor
    report = json.loads(result.stdout)
    metrics = report["metrics"]
    assert metrics["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert metrics["points"] == 30
    curve = metrics["robust_accuracy"]
    assert curve["0.15"] < curve["0.03"] <= metrics["clean_accuracy"]
    finding = report["findings"][0]
    assert finding["rule_id"] == "BST-EVA-001" and finding["severity"] == "high"
    assert plot.read_text().lstrip().startswith("<?xml")
    export = tmp_path / "ledger.jsonl"
    exported = runner.invoke(app, ["ledger", "export", str(tmp_path / "l.db"), "-o", str(export)])
    assert exported.exit_code == 0, exported.output
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    events = [json.loads(line["entry"]) for line in lines if "entry" in line]
    assert [e["kind"] for e in events] == ["assess"]
    assert events[0]["details"]["robust_accuracy"] == curve


def test_table_output_and_fail_on(files) -> None:
    args = ["--model", str(files / "mlp.pt"), "--data", str(files / "digits.npz"),
            "--eps", "0.01", "--attacks", "pgd", *FAST]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "robust accuracy" in result.output and "after pgd" in result.output
    assert _invoke(*args, "--fail-on", "low").exit_code == 1


def test_scikit_learn_tabular_with_ranges_and_immutable_features(files, tmp_path) -> None:
    out = tmp_path / "report.json"
    result = _invoke(
        "--model", str(files / "cancer.joblib"), "--data", str(files / "cancer.csv"),
        "--label", "target", "--eps", "0.1", "--ranges", str(files / "ranges.json"),
        "--immutable", "mean texture,worst area", "--clip", "0,1", "--format", "json",
        "--out", str(out), *FAST,
    )
    assert result.exit_code in (0, 1), result.output
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["attacks"] == ["square"]
    assert metrics["curve"][0]["stages"][0]["queries"] > 0


@pytest.fixture
def endpoint(files):
    """A real HTTP endpoint on loopback serving the digits logistic regression."""
    model = joblib.load(files / "logreg.joblib")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = {"probabilities": model.predict_proba(np.array(body["inputs"])).tolist()}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/predict"
    server.shutdown()
    server.server_close()


def test_remote_model_with_a_query_limit(files, endpoint) -> None:
    args = ["--model-url", endpoint, "--data", str(files / "digits.npz"), "--eps", "0.2",
            "--clip", "0,1", "--format", "json", *FAST]
    result = _invoke(*args)
    assert result.exit_code in (0, 1), result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["attacks"] == ["square"]
    assert metrics["robust_accuracy"]["0.2"] < metrics["clean_accuracy"]
    limited = _invoke(*args, "--query-limit", "200")
    assert limited.exit_code == 2
    assert "query budget of 200" in limited.output and "--query-limit" in limited.output
    assert len(limited.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "logreg.joblib", "--data", "wide.npz"], "the model expects (64,)"),
        (["--model", "logreg.joblib", "--data", "text.npz"], "features must be numeric"),
        (["--model", "mlp.pt", "--data", "labels.npz"], "labels must be class indices 0..9"),
        (["--model", "logreg.joblib", "--data", "labels.npz"], "label 10 is not one of"),
        (["--model", "mlp.pt", "--data", "digits.npz", "--eps", "0,0.1"],
         "epsilon must be a positive number"),
        (["--model", "logreg.joblib", "--data", "digits.npz", "--attacks", "pgd"],
         "use a black-box attack: --attacks square or --attacks hopskipjump"),
        (["--model", "mlp.pt", "--data", "digits.npz", "--plot", "curve.pdf"],
         "--plot must end in .png or .svg"),
        (["--model", "missing.pt", "--data", "digits.npz"], "no such model file"),
        (["--model", "mlp.pt", "--data", "digits.npz", "--norm", "1"], "unknown norm"),
        (["--model", "mlp.pt", "--data", "digits.npz", "--clip", "1,0"], "--clip must be"),
        (["--model", "cancer.joblib", "--data", "cancer.csv", "--label", "target",
          "--immutable", "colour"], "unknown feature 'colour'"),
    ],
)
def test_bad_input_is_one_line_and_exit_two(files, monkeypatch, args, message) -> None:
    monkeypatch.chdir(files)
    result = _invoke(*args, *FAST)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (files / "curve.pdf").exists()
