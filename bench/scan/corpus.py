"""The benchmark corpus: crafted malicious files, benign files made by real libraries, one
torch checkpoint of more than 1 GiB and a folder of 2,000 small pickles.

Each part is written once and reused: a part is complete when its manifest (written last)
lists files that are all still there with the recorded sizes. Bump CORPUS_VERSION when a
builder changes so that old corpora are rebuilt."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS_VERSION = 1
PARTS = ("malicious", "benign", "big", "small")
MARKER_NAME = "MARKER-a-payload-ran"
BIG_MIN_BYTES = 1 << 30
SMALL_COUNT = 2_000
SEED = 20_240_601


@dataclass(frozen=True)
class Corpus:
    root: Path

    @property
    def marker(self) -> Path:
        return self.root / MARKER_NAME

    @property
    def files_root(self) -> Path:
        """The folder holding the four parts, and nothing else: the whole-corpus target."""
        return self.root / "files"

    @property
    def empty(self) -> Path:
        """An empty folder: scanning it measures a tool's start-up alone."""
        return self.root / "empty"

    def part(self, name: str) -> Path:
        return self.files_root / name

    @property
    def big_checkpoint(self) -> Path:
        return self.part("big") / "checkpoint-1gib.pt"

    def files(self, part: str) -> list[Path]:
        """The part's files, in the order the manifest lists them."""
        manifest = json.loads(self._manifest_path(part).read_text())
        return [self.root / rel for rel in manifest["files"]]

    def all_files(self) -> list[Path]:
        return [f for part in PARTS for f in self.files(part)]

    def scan_target(self, part: str) -> Path:
        """What a tool is pointed at: the folder, or the file itself for the big part."""
        return self.big_checkpoint if part == "big" else self.part(part)

    def _manifest_path(self, part: str) -> Path:
        return self.root / "manifests" / f"{part}.json"

    def is_complete(self, part: str) -> bool:
        path = self._manifest_path(part)
        if not path.is_file():
            return False
        manifest = json.loads(path.read_text())
        if manifest.get("version") != CORPUS_VERSION:
            return False
        return all(
            (self.root / rel).is_file() and (self.root / rel).stat().st_size == size
            for rel, size in manifest["files"].items()
        )

    def write_manifest(self, part: str, files: list[Path]) -> None:
        sizes = {str(f.relative_to(self.root)): f.stat().st_size for f in files}
        payload = json.dumps({"version": CORPUS_VERSION, "files": sizes}, indent=1)
        write_atomic(self._manifest_path(part), payload.encode())


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def ensure(corpus: Corpus, log: Callable[[str], None]) -> None:
    """Build every part that is missing or stale; the malicious part is always re-derived
    from bastion.demo.malicious (cheap) and rewritten only when its bytes changed."""
    corpus.root.mkdir(parents=True, exist_ok=True)
    corpus.empty.mkdir(exist_ok=True)
    ensure_malicious(corpus, log)
    builders = {"benign": build_benign, "big": build_big, "small": build_small}
    for part, build in builders.items():
        if corpus.is_complete(part):
            log(f"corpus: reusing {part}/")
            continue
        log(f"corpus: building {part}/ ...")
        shutil.rmtree(corpus.part(part), ignore_errors=True)
        corpus.part(part).mkdir(parents=True)
        corpus.write_manifest(part, build(corpus))


# --- malicious --------------------------------------------------------------------------


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "technique"


def malicious_files(corpus: Corpus) -> dict[Path, bytes]:
    """Every technique's file, each in a folder named after its technique so that the
    file name a technique chose (extension mismatches included) is kept verbatim."""
    from bastion.demo.malicious import TECHNIQUES

    files: dict[Path, bytes] = {}
    for technique, builder in TECHNIQUES.items():
        name, data = builder(corpus.marker)
        files[corpus.part("malicious") / slug(technique) / name] = data
    return files


def ensure_malicious(corpus: Corpus, log: Callable[[str], None]) -> None:
    wanted = malicious_files(corpus)
    folder = corpus.part("malicious")
    present = {p for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
    unchanged = present == set(wanted) and all(p.read_bytes() == d for p, d in wanted.items())
    if unchanged and corpus.is_complete("malicious"):
        log(f"corpus: reusing malicious/ ({len(wanted)} files)")
        return
    log(f"corpus: writing malicious/ ({len(wanted)} files)")
    shutil.rmtree(folder, ignore_errors=True)
    for path, data in wanted.items():
        write_atomic(path, data)
    corpus.write_manifest("malicious", sorted(wanted))


# --- benign: real libraries ---------------------------------------------------------------


def build_benign(corpus: Corpus) -> list[Path]:
    folder = corpus.part("benign")
    written: list[Path] = []
    for group in (torch_files, sklearn_files, numpy_files, pandas_files, safetensors_files,
                  onnx_files, python_files):
        written.extend(group(folder))
    return sorted(written)


def torch_files(folder: Path) -> list[Path]:
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))
    conv = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(8, 16)).sum().backward()
    optimizer.step()
    mixed = {
        "half": torch.randn(4, 4).half(),
        "bfloat16": torch.randn(4, 4).bfloat16(),
        "int8": torch.randint(-8, 8, (16,), dtype=torch.int8),
        "mask": torch.rand(10) > 0.5,
        "view": torch.arange(20.0)[5:15],  # a view shares its storage with an offset
    }
    objects = {
        "torch_state_dict.pt": (model.state_dict(), True),
        "torch_state_dict_legacy.pt": (model.state_dict(), False),
        "torch_whole_module.pt": (model, True),
        "torch_whole_module_legacy.pth": (model, False),
        "torch_optimizer_state.pt": (optimizer.state_dict(), True),
        "torch_training_checkpoint.pth": (
            {"epoch": 3, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "loss": 0.25, "classes": ["a", "b", "c", "d"]},
            True,
        ),
        "torch_mixed_dtypes.pt": (mixed, True),
        "torch_conv_state_dict.bin": (conv.state_dict(), True),
        "torch_tensor.pt": (torch.randn(3, 5), True),
    }
    paths = []
    for name, (obj, zip_format) in objects.items():
        path = folder / name
        torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
        paths.append(path)
    return paths


def classification_data():
    from sklearn.datasets import make_classification

    return make_classification(n_samples=200, n_features=8, n_informative=5, n_classes=3,
                               random_state=0)


def sklearn_estimators() -> dict[str, object]:
    import numpy as np
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.compose import ColumnTransformer
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    x, y = classification_data()
    frame = pd.DataFrame({
        "age": np.arange(40) % 70,
        "city": np.array(["paris", "lyon", "nice", "lille"])[np.arange(40) % 4],
    })
    columns = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["age"]),
                           ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"])]),
        LogisticRegression(max_iter=200),
    )
    return {
        "logreg": LogisticRegression(max_iter=500).fit(x, y),
        "pipeline": make_pipeline(StandardScaler(), PCA(4),
                                  RandomForestClassifier(n_estimators=5, random_state=0)).fit(x, y),
        "gradient_boosting": GradientBoostingClassifier(n_estimators=5, random_state=0).fit(x, y),
        "svc": SVC(random_state=0).fit(x, y),
        "decision_tree": DecisionTreeClassifier(random_state=0).fit(x, y),
        "kmeans": KMeans(n_clusters=3, n_init=2, random_state=0).fit(x),
        "column_transformer": columns.fit(frame, np.arange(40) % 2),
    }


def sklearn_files(folder: Path) -> list[Path]:
    import joblib

    models = sklearn_estimators()
    pickled = {
        "logreg": (2, 4, 5),
        "pipeline": (2, 4, 5),
        "gradient_boosting": (5,),
        "svc": (4,),
        "decision_tree": (2,),
        "kmeans": (4,),
        "column_transformer": (5,),
    }
    paths = []
    for name, protocols in pickled.items():
        for protocol in protocols:
            path = folder / f"sklearn_{name}_p{protocol}.pkl"
            path.write_bytes(pickle.dumps(models[name], protocol=protocol))
            paths.append(path)
    compressions = {
        "plain": 0, "zlib": 3, "gzip": ("gzip", 3), "bz2": ("bz2", 3),
        "lzma": ("lzma", 3), "xz": ("xz", 3),
    }
    for label, compress in compressions.items():
        path = folder / f"sklearn_pipeline_joblib_{label}.joblib"
        joblib.dump(models["pipeline"], path, compress=compress)
        paths.append(path)
    return paths


def numpy_files(folder: Path) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    structured = np.zeros(5, dtype=[("id", "<i4"), ("score", "<f8"), ("tag", "S8")])
    arrays = {
        "numpy_float32.npy": rng.standard_normal((64, 32)).astype(np.float32),
        "numpy_structured.npy": structured,
        "numpy_fortran.npy": np.asfortranarray(rng.integers(0, 100, (10, 7))),
    }
    paths = []
    for name, array in arrays.items():
        np.save(folder / name, array)
        paths.append(folder / name)
    bundle = {"x": rng.standard_normal((50, 8)), "y": rng.integers(0, 3, 50)}
    np.savez(folder / "numpy_bundle.npz", **bundle)
    np.savez_compressed(folder / "numpy_bundle_compressed.npz", **bundle)
    return [*paths, folder / "numpy_bundle.npz", folder / "numpy_bundle_compressed.npz"]


def pandas_files(folder: Path) -> list[Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(SEED)
    frame = pd.DataFrame({
        "value": rng.standard_normal(30),
        "group": pd.Categorical(["a", "b", "c"] * 10),
        "when": pd.date_range("2024-01-01", periods=30, freq="D"),
    })
    series = pd.Series(rng.integers(0, 10, 20), name="counts")
    outputs = {
        "pandas_frame.pkl": (frame, None),
        "pandas_series.pkl": (series, None),
        "pandas_frame.pkl.gz": (frame, "gzip"),
    }
    paths = []
    for name, (obj, compression) in outputs.items():
        obj.to_pickle(folder / name, compression=compression)
        paths.append(folder / name)
    return paths


def safetensors_files(folder: Path) -> list[Path]:
    import numpy as np
    import torch
    from safetensors.numpy import save_file as save_numpy
    from safetensors.torch import save_file as save_torch

    torch.manual_seed(SEED)
    save_torch({"weight": torch.randn(32, 16), "bias": torch.zeros(32)},
               folder / "safetensors_torch.safetensors", metadata={"format": "pt"})
    rng = np.random.default_rng(SEED)
    save_numpy({"embedding": rng.standard_normal((100, 8)).astype(np.float16),
                "ids": np.arange(100, dtype=np.int64)},
               folder / "safetensors_numpy.safetensors")
    return [folder / "safetensors_torch.safetensors", folder / "safetensors_numpy.safetensors"]


def onnx_files(folder: Path) -> list[Path]:
    import numpy as np
    from skl2onnx import to_onnx

    models = sklearn_estimators()
    x, _ = classification_data()
    sample = x[:1].astype(np.float32)
    paths = []
    for name in ("logreg", "pipeline", "decision_tree"):
        path = folder / f"onnx_{name}.onnx"
        path.write_bytes(to_onnx(models[name], sample, target_opset=17).SerializeToString())
        paths.append(path)
    return paths


def python_files(folder: Path) -> list[Path]:
    import collections
    import datetime
    import decimal

    import h5py
    import numpy as np

    record = {
        "name": "run-7", "tags": ["a", "b"], "shape": (3, 4), "ids": {1, 2, 3},
        "counts": collections.Counter("abracadabra"),
        "ordered": collections.OrderedDict(b=2, a=1),
        "when": datetime.datetime(2024, 6, 1, 12, 30), "price": decimal.Decimal("9.95"),
        "raw": b"\x00\x01", "ratio": complex(1, 2),
    }
    paths = []
    for protocol in (0, 5):
        path = folder / f"python_builtins_p{protocol}.pkl"
        path.write_bytes(pickle.dumps(record, protocol=protocol))
        paths.append(path)
    h5 = folder / "hdf5_datasets.h5"
    with h5py.File(h5, "w") as handle:
        handle.create_dataset("weights", data=np.arange(64, dtype=np.float32).reshape(8, 8))
        handle.attrs["description"] = "plain HDF5 datasets, not a Keras model"
    return [*paths, h5]


# --- the big checkpoint and the small pickles ----------------------------------------------


def build_big(corpus: Corpus) -> list[Path]:
    """A state_dict of four 8192x8192 float32 tensors: 1 GiB of storage plus the pickle and
    zip records. Zeros are written as they are; nothing is random, so it is deterministic."""
    import torch

    state = {f"layers.{i}.weight": torch.zeros(8192, 8192) for i in range(4)}
    state.update({f"layers.{i}.bias": torch.zeros(8192) for i in range(4)})
    path = corpus.big_checkpoint
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    size = path.stat().st_size
    if size < BIG_MIN_BYTES:
        raise RuntimeError(f"{path} is {size} bytes, expected at least {BIG_MIN_BYTES}")
    return [path]


def small_object(index: int, rng) -> object:
    """One of four benign shapes, chosen by index so the mix is even and deterministic."""
    import numpy as np

    kind = index % 4
    if kind == 0:
        return {"id": index, "score": float(rng.random()), "label": f"item-{index}",
                "flags": [bool(b) for b in rng.integers(0, 2, 4)]}
    if kind == 1:
        return [int(v) for v in rng.integers(0, 1000, 16)]
    if kind == 2:
        return rng.standard_normal(int(rng.integers(4, 64))).astype(np.float32)
    return {"weights": rng.standard_normal((4, 4)), "bias": np.zeros(4), "step": index,
            "history": (0.5, 0.25, 0.125)}


def build_small(corpus: Corpus) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(SEED)
    folder = corpus.part("small")
    paths = []
    for index in range(SMALL_COUNT):
        path = folder / f"small-{index:04d}.pkl"
        protocol = 2 + index % 4  # protocols 2, 3, 4, 5
        path.write_bytes(pickle.dumps(small_object(index, rng), protocol=protocol))
        paths.append(path)
    return paths
