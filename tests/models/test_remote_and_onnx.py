"""ONNX Runtime and HTTP adapters: same probabilities as the original model, queries counted,
a clear error when the budget runs out or the endpoint misbehaves."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn

from bastion.assess.evasion import square
from bastion.errors import InputError, UsageError
from bastion.models.classifier import Classifier, WhiteBoxClassifier
from bastion.models.http_classifier import HttpClassifier, QueryBudgetExhausted
from bastion.models.onnx_classifier import OnnxClassifier


@pytest.fixture(scope="module")
def digits_model():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    return x, y, LogisticRegression(max_iter=100).fit(x[:500], y[:500])


@pytest.mark.parametrize("zipmap", [False, True])
def test_onnx_from_scikit_learn_matches_the_estimator(digits_model, zipmap) -> None:
    x, _, model = digits_model
    proto = to_onnx(model, x[:1], options={id(model): {"zipmap": zipmap}}, target_opset=17)
    clf = OnnxClassifier(proto.SerializeToString(), clip_values=(0.0, 1.0))
    assert isinstance(clf, Classifier) and not isinstance(clf, WhiteBoxClassifier)
    assert clf.n_classes == 10 and clf.input_shape == (64,)
    np.testing.assert_allclose(clf.predict_proba(x[:50]), model.predict_proba(x[:50]), atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_logits_become_probabilities(tmp_path) -> None:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path / "net.onnx"
    torch.onnx.export(module, (torch.zeros(1, 4),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})
    clf = OnnxClassifier(path)
    rows = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    expected = torch.softmax(module(torch.tensor(rows)), dim=1).detach().numpy()
    np.testing.assert_allclose(clf.predict_proba(rows), expected, atol=1e-5)


def test_onnx_garbage_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(InputError, match="ONNX Runtime cannot load the model"):
        OnnxClassifier(b"not an onnx model")


class _Endpoint(BaseHTTPRequestHandler):
    model = None
    mode = "ok"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.mode == "error":
            self.send_error(500, "model crashed")
            return
        rows = np.asarray(body["inputs"], dtype=np.float32)
        reply = {"probabilities": self.model.predict_proba(rows).tolist()}
        if self.mode == "wrong-key":
            reply = {"scores": reply["probabilities"]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def endpoint(digits_model) -> Iterator[type[_Endpoint]]:
    handler = type("Handler", (_Endpoint,), {"model": digits_model[2], "mode": "ok"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    handler.url = f"http://127.0.0.1:{server.server_address[1]}/predict"
    yield handler
    server.shutdown()
    server.server_close()


def test_http_adapter_counts_queries_and_supports_black_box_attacks(endpoint, digits_model):
    x, y, model = digits_model
    clf = HttpClassifier(endpoint.url, input_shape=(64,), clip_values=(0.0, 1.0), batch_size=16)
    assert clf.n_classes == 10 and clf.queries == 1  # the probe that learned n_classes
    np.testing.assert_allclose(clf.predict_proba(x[:40]), model.predict_proba(x[:40]), atol=1e-6)
    assert clf.queries == 41
    result = square(clf, x[:10], y[:10], eps=0.2, max_queries=30, seed=0)
    assert clf.queries == 41 + int(result.queries.sum()) + 10  # + one check of the results
    assert result.success.any()


def test_http_budget_runs_out_with_a_clear_error(endpoint, digits_model):
    x = digits_model[0]
    clf = HttpClassifier(endpoint.url, n_classes=10, input_shape=(64,), budget=25)
    clf.predict_proba(x[:20])
    with pytest.raises(QueryBudgetExhausted, match=r"budget of 25 .* exhausted: 20 rows"):
        clf.predict_proba(x[:10])
    assert clf.queries == 20 and clf.remaining == 5


def test_http_endpoint_failures_are_one_line(endpoint):
    clf = HttpClassifier(endpoint.url, n_classes=10, input_shape=(64,))
    endpoint.mode = "error"
    with pytest.raises(InputError, match="answered HTTP 500"):
        clf.predict_proba(np.zeros((1, 64)))
    endpoint.mode = "wrong-key"
    with pytest.raises(InputError, match="no 'probabilities' field"):
        clf.predict_proba(np.zeros((1, 64)))
    with pytest.raises(UsageError, match="must start with http"):
        HttpClassifier("ftp://example", n_classes=2)
    dead = HttpClassifier("http://127.0.0.1:9/none", n_classes=2, timeout=2)
    with pytest.raises(InputError, match="cannot reach"):
        dead.predict_proba(np.zeros((1, 64)))
