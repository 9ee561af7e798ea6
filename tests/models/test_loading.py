"""Safe loading: verify, scan, refuse, load."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from bastion.demo.malicious import TECHNIQUES, os_system_pickle
from bastion.errors import InputError, RefusedError
from bastion.findings import Severity
from bastion.models import load
from bastion.supplychain.sign import VerificationError, generate_key_pair, sign


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = generate_key_pair(tmp_path / "keys" / "key.pem")
    return private, public


def _state_dict_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    path = folder / "model.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    return path


def test_signed_checkpoint_is_verified_then_loaded(tmp_path: Path, keys) -> None:
    path = _state_dict_file(tmp_path / "release")
    sign(path, keys[0])
    state = load(path, verify_key=keys[1])
    assert set(state) == {"weight", "bias"}
    assert state["weight"].shape == (2, 3)


def test_folder_signature_covers_files_inside(tmp_path: Path, keys) -> None:
    path = _state_dict_file(tmp_path / "release")
    sign(path.parent, keys[0])
    assert set(load(path, verify_key=keys[1])) == {"weight", "bias"}


def test_tampered_checkpoint_stops_the_load(tmp_path: Path, keys) -> None:
    path = _state_dict_file(tmp_path / "release")
    sign(path, keys[0])
    with path.open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(VerificationError):
        load(path, verify_key=keys[1])


def test_unsigned_file_with_a_key_is_refused(tmp_path: Path, keys) -> None:
    path = _state_dict_file(tmp_path / "release")
    with pytest.raises(InputError, match="no signature"):
        load(path, verify_key=keys[1])


def test_malicious_pickle_is_refused_before_loading(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(os_system_pickle(marker))
    with pytest.raises(RefusedError, match=r"refusing to load .*BST-SCAN-PKL-001"):
        load(path)


def test_malicious_torch_checkpoint_is_refused(tmp_path: Path, marker: Path) -> None:
    name, data = TECHNIQUES["torch_zip_data_pkl"](marker)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(RefusedError):
        load(path)


def test_signed_malicious_file_is_still_refused(tmp_path: Path, keys, marker: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(os_system_pickle(marker))
    sign(path, keys[0])
    with pytest.raises(RefusedError):
        load(path, verify_key=keys[1])


def test_scikit_learn_models_load_after_a_clean_scan(tmp_path: Path) -> None:
    x = np.arange(40, dtype=float).reshape(20, 2)
    model = LogisticRegression().fit(x, np.arange(20) % 2)
    joblib.dump(model, tmp_path / "m.joblib", compress=3)
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(model, protocol=5))
    for name in ("m.joblib", "m.pkl"):
        loaded = load(tmp_path / name)
        assert (loaded.predict(x) == model.predict(x)).all()


def test_numpy_array_loads_without_pickle(tmp_path: Path) -> None:
    np.save(tmp_path / "w.npy", np.arange(6).reshape(2, 3))
    assert load(tmp_path / "w.npy").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_threshold_is_configurable(tmp_path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    with pytest.raises(RefusedError, match="trusted"):
        load(tmp_path / "whole.pt", fail_on=Severity.LOW)


def test_whole_module_passes_the_scan_but_not_weights_only_loading(tmp_path: Path) -> None:
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), tmp_path / "whole.pt")
    with pytest.raises(InputError, match="Save a state_dict or safetensors"):
        load(tmp_path / "whole.pt")


@pytest.mark.parametrize("content", [b"just some text\n", b""])
def test_unsupported_or_missing_files_are_input_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.bin"
    path.write_bytes(content)
    with pytest.raises(InputError, match="does not load this format"):
        load(path)
    with pytest.raises(InputError, match="no such model file"):
        load(tmp_path / "absent.pt")
