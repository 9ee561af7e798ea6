"""resolve_model: every kind of model file becomes the right Classifier, scanned first."""

from __future__ import annotations

import pickle
import sys
import textwrap

import joblib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from torch import nn

from bastion.errors import InputError, RefusedError, UsageError
from bastion.models.classifier import SklearnClassifier
from bastion.models.onnx_classifier import OnnxClassifier
from bastion.models.resolve import resolve_model
from bastion.models.torch_classifier import TorchClassifier

FACTORY = textwrap.dedent(
    """
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def wrong():
        return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))

    def not_a_module():
        return 42
    """
)


@pytest.fixture
def factory(tmp_path, monkeypatch) -> str:
    (tmp_path / "userpkg_resolve.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "userpkg_resolve"
    sys.modules.pop("userpkg_resolve", None)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _same(clf, module) -> None:
    rows = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    expected = torch.softmax(module(torch.tensor(rows)), 1).detach().numpy()
    np.testing.assert_allclose(clf.predict_proba(rows), expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_archive_is_white_box(tmp_path) -> None:
    module = _net()
    torch.jit.script(module).save(str(tmp_path / "net.pt"))
    clf = resolve_model(tmp_path / "net.pt", input_shape=(4,), clip_values=(-5.0, 5.0))
    assert isinstance(clf, TorchClassifier) and clf.n_classes == 3
    _same(clf, module)


def test_state_dict_and_safetensors_with_factory(tmp_path, factory) -> None:
    module = _net()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        clf = resolve_model(tmp_path / name, f"{factory}:build", input_shape=(4,))
        assert isinstance(clf, TorchClassifier)
        _same(clf, module)
    with pytest.raises(UsageError, match=r"--model-factory package\.module:function"):
        resolve_model(tmp_path / "w.pt", input_shape=(4,))
    with pytest.raises(InputError, match="weights do not fit"):
        resolve_model(tmp_path / "w.pt", f"{factory}:wrong", input_shape=(4,))
    with pytest.raises(InputError, match=r"not a torch nn\.Module"):
        resolve_model(tmp_path / "w.pt", f"{factory}:not_a_module", input_shape=(4,))
    with pytest.raises(InputError, match="--model-factory: cannot import nope_missing"):
        resolve_model(tmp_path / "w.pt", "nope_missing:build", input_shape=(4,))
    with pytest.raises(UsageError, match="needs the input shape"):
        resolve_model(tmp_path / "w.pt", f"{factory}:build")


def test_scikit_learn_and_onnx_files(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    joblib.dump(model, tmp_path / "m.joblib")
    (tmp_path / "m.onnx").write_bytes(
        to_onnx(model, x[:1], options={id(model): {"zipmap": False}}).SerializeToString()
    )
    for name, kind in (("m.joblib", SklearnClassifier), ("m.onnx", OnnxClassifier)):
        clf = resolve_model(tmp_path / name)
        assert isinstance(clf, kind) and clf.n_classes == 2
        np.testing.assert_allclose(clf.predict_proba(x), model.predict_proba(x), atol=1e-5)


def test_malicious_pickle_is_refused_before_loading(tmp_path, marker) -> None:
    # GLOBAL os.system, the command, TUPLE1, REDUCE: what a malicious model file does
    payload = (b"\x80\x04cos\nsystem\n" + pickle.dumps(f"touch {marker}", protocol=0)[:-1]
               + b"\x85R.")
    (tmp_path / "evil.pkl").write_bytes(payload)
    with pytest.raises(RefusedError, match="refusing to load"):
        resolve_model(tmp_path / "evil.pkl")
    with pytest.raises(InputError, match="no such model file"):
        resolve_model(tmp_path / "missing.pt")
