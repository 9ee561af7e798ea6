"""Real model files made by real libraries are not flagged: no finding at high or above.

Each file is written by the library itself (torch.save, pickle, joblib, np.save,
DataFrame.to_pickle, safetensors, skl2onnx), small and from fixed seeds."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import save_file as save_numpy_safetensors
from safetensors.torch import save_file as save_torch_safetensors
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import bastion
from bastion.findings import Severity

RNG_SEED = 7
X = np.random.default_rng(RNG_SEED).normal(size=(60, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)


def _estimators() -> dict[str, Callable[[], object]]:
    return {
        "logistic_regression": lambda: LogisticRegression(),
        "random_forest": lambda: RandomForestClassifier(n_estimators=5, random_state=RNG_SEED),
        "gradient_boosting": lambda: GradientBoostingClassifier(
            n_estimators=5, random_state=RNG_SEED
        ),
        "svc_probability": lambda: SVC(probability=True, random_state=RNG_SEED),
        "scaler_pca_logreg_pipeline": lambda: make_pipeline(
            StandardScaler(), PCA(n_components=2), LogisticRegression()
        ),
        "kmeans": lambda: KMeans(n_clusters=2, n_init=2, random_state=RNG_SEED),
        "mlp_classifier": lambda: MLPClassifier(
            hidden_layer_sizes=(8,), max_iter=50, random_state=RNG_SEED
        ),
    }


@pytest.fixture(scope="module")
def fitted() -> dict[str, object]:
    models = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few iterations are enough
        warnings.simplefilter("ignore", FutureWarning)  # SVC(probability=True), deprecated
        for name, make in _estimators().items():
            models[name] = make().fit(X, Y)
    return models


SKLEARN_WRITERS: dict[str, Callable[[object, Path], None]] = {
    "pickle2": lambda model, path: path.write_bytes(pickle.dumps(model, protocol=2)),
    "pickle4": lambda model, path: path.write_bytes(pickle.dumps(model, protocol=4)),
    "pickle5": lambda model, path: path.write_bytes(pickle.dumps(model, protocol=5)),
    "joblib": lambda model, path: joblib.dump(model, path),
    "joblib_compress3": lambda model, path: joblib.dump(model, path, compress=3),
}


def assert_clean(path: Path, *formats: str) -> None:
    report = bastion.scan(path).files[0]
    high = [f for f in report.findings if f.severity >= Severity.HIGH]
    assert high == [], [(f.rule_id, f.title) for f in high]
    assert set(formats) <= set(report.formats), report.formats
    low = [f for f in report.findings if f.severity is Severity.LOW]
    assert all(f.rule_id == "BST-SCAN-PKL-003" for f in low), low


@pytest.mark.parametrize("writer", sorted(SKLEARN_WRITERS))
@pytest.mark.parametrize("estimator", sorted(_estimators()))
def test_scikit_learn_models_are_clean(
    estimator: str, writer: str, fitted: dict[str, object], tmp_path: Path
) -> None:
    path = tmp_path / f"{estimator}.{writer}"
    SKLEARN_WRITERS[writer](fitted[estimator], path)
    assert_clean(path, "pickle")


# -- torch ------------------------------------------------------------------------------------


def _network() -> torch.nn.Module:
    torch.manual_seed(RNG_SEED)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, kernel_size=3),
        torch.nn.BatchNorm2d(2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 4 * 4, 3),
    )


def _adam_state() -> dict:
    network = _network()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    network(torch.ones(2, 1, 6, 6)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


TORCH_FILES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "state_dict_zip": (lambda p: torch.save(_network().state_dict(), p), ("zip", "pickle")),
    "state_dict_legacy": (
        lambda p: torch.save(_network().state_dict(), p, _use_new_zipfile_serialization=False),
        ("pickle", "torch-legacy"),
    ),
    "whole_module_zip": (lambda p: torch.save(_network(), p), ("zip", "pickle")),
    "whole_module_legacy": (
        lambda p: torch.save(_network(), p, _use_new_zipfile_serialization=False),
        ("pickle", "torch-legacy"),
    ),
    "adam_state_dict": (lambda p: torch.save(_adam_state(), p), ("zip", "pickle")),
    "tensor_plain_pickle": (
        lambda p: p.write_bytes(pickle.dumps(torch.arange(6.0).reshape(2, 3))),
        ("pickle",),
    ),
    "mixed_dtypes_and_parameter": (
        lambda p: torch.save(
            {
                "half": torch.ones(2, dtype=torch.float16),
                "bf16": torch.ones(2, dtype=torch.bfloat16),
                "ints": torch.arange(3),
                "mask": torch.tensor([True, False]),
                "param": torch.nn.Parameter(torch.zeros(2)),
                "size": torch.Size([2, 3]),
                "epoch": 3,
            },
            p,
        ),
        ("zip", "pickle"),
    ),
    "safetensors_torch": (
        lambda p: save_torch_safetensors(_network().state_dict(), str(p)),
        ("safetensors",),
    ),
}


@pytest.mark.parametrize("name", sorted(TORCH_FILES))
def test_torch_files_are_clean(name: str, tmp_path: Path) -> None:
    write, formats = TORCH_FILES[name]
    path = tmp_path / f"{name}.pt"
    write(path)
    assert_clean(path, *formats)


# -- numpy and pandas -------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "when": pd.date_range("2024-01-01", periods=4, freq="D"),
            "when_utc": pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC"),
            "kind": pd.Categorical(["a", "b", "a", "c"]),
            "score": [0.5, 1.5, np.nan, 2.0],
            "count": np.arange(4, dtype=np.int32),
            "name": ["w", "x", "y", "z"],
        }
    )


DATA_FILES: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "npy_float": (lambda p: np.save(p, X), ("numpy",)),
    "npy_int_fortran": (
        lambda p: np.save(p, np.asfortranarray(np.arange(12).reshape(3, 4))),
        ("numpy",),
    ),
    "npy_object_builtins": (
        lambda p: np.save(p, np.array([1, "a", None, (2, 3), {"k": 1.5}], dtype=object)),
        ("numpy", "pickle"),
    ),
    "npz": (lambda p: np.savez(p, x=X, y=Y), ("zip",)),
    "npz_compressed": (lambda p: np.savez_compressed(p, x=X, y=Y), ("zip",)),
    "object_array_pickle": (
        lambda p: p.write_bytes(pickle.dumps(np.array([1, "a", None, 2.5], dtype=object))),
        ("pickle",),
    ),
    "numpy_structured_and_scalars": (
        lambda p: p.write_bytes(
            pickle.dumps(
                {
                    "rec": np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]),
                    "scalar": np.float64(1.5),
                    "dt": np.datetime64("2024-01-01"),
                    "rng": np.random.default_rng(RNG_SEED),
                },
                protocol=5,
            )
        ),
        ("pickle",),
    ),
    "safetensors_numpy": (lambda p: save_numpy_safetensors({"x": X}, str(p)), ("safetensors",)),
    "dataframe_pickle": (lambda p: p.write_bytes(pickle.dumps(_frame())), ("pickle",)),
    "series_pickle": (
        lambda p: p.write_bytes(pickle.dumps(pd.Series([1.0, 2.0], index=["a", "b"]))),
        ("pickle",),
    ),
    "dataframe_to_pickle": (lambda p: _frame().to_pickle(p), ("pickle",)),
    "dataframe_to_pickle_gzip": (lambda p: _frame().to_pickle(p, compression="gzip"), ("pickle",)),
    "series_to_pickle_datetime": (
        lambda p: pd.Series(pd.date_range("2024-01-01", periods=3)).to_pickle(p),
        ("pickle",),
    ),
}


@pytest.mark.parametrize("name", sorted(DATA_FILES))
def test_numpy_and_pandas_files_are_clean(name: str, tmp_path: Path) -> None:
    write, formats = DATA_FILES[name]
    path = tmp_path / name
    write(path)
    written = next(tmp_path.iterdir())  # np.save and np.savez add their own extension
    assert_clean(written, *formats)


def test_model_fitted_on_a_dataframe_saved_with_joblib_is_clean(tmp_path: Path) -> None:
    # feature_names_in_ is an object array: joblib writes it as a pickle inside the pickle,
    # which a plain pickle.load reading meets as a STACK_GLOBAL on the estimator (a load error).
    frame = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    model = LogisticRegression().fit(frame, [0, 1, 0, 1])
    joblib.dump(model, tmp_path / "model.joblib")
    assert_clean(tmp_path / "model.joblib", "joblib")


# -- ONNX -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "estimator", ["logistic_regression", "random_forest", "scaler_pca_logreg_pipeline"]
)
def test_onnx_from_skl2onnx_is_clean(estimator: str, fitted: dict[str, object],
                                     tmp_path: Path) -> None:
    from skl2onnx import to_onnx

    path = tmp_path / f"{estimator}.onnx"
    path.write_bytes(to_onnx(fitted[estimator], X[:1], target_opset=17).SerializeToString())
    assert_clean(path, "onnx")
