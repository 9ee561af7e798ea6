"""`--data` loading: every supported format, and one clear line for each kind of bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bastion.data import load_dataset
from bastion.errors import InputError


def test_npz_with_renamed_keys_and_labels_kept_as_indices(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, features=np.ones((4, 3)), target=np.array([0, 2, 1, 2]))
    data = load_dataset(path, x_key="features", y_key="target")
    assert data.x.shape == (4, 3) and data.y.tolist() == [0, 2, 1, 2]
    assert data.classes == (0, 1, 2)
    with pytest.raises(InputError, match="no array 'x' \\(has features, target\\); name it"):
        load_dataset(path)


def test_csv_parquet_and_jsonl_with_a_string_label_and_a_key(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {"id": [10, 11, 12], "a": [0.5, 1.5, 2.5], "b": [1, 2, 3], "kind": ["y", "x", "y"]}
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    frame.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    for name in ("d.csv", "d.parquet", "d.jsonl"):
        data = load_dataset(tmp_path / name, label="kind", key="id")
        assert data.feature_names == ("a", "b")
        np.testing.assert_array_equal(data.x, [[0.5, 1], [1.5, 2], [2.5, 3]])
        assert data.y.tolist() == [1, 0, 1] and data.classes == ("x", "y")
        assert data.keys.tolist() == [10, 11, 12]


def test_table_errors_name_the_column_or_row(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    pd.DataFrame({"a": [1.0, 2.0], "label": [1.0, None]}).to_csv(path, index=False)
    with pytest.raises(InputError, match="label of row 1 is missing"):
        load_dataset(path, label="label")
    with pytest.raises(InputError, match="no label column 'target' \\(columns: a, label\\)"):
        load_dataset(path, label="target")
    text = tmp_path / "t.csv"
    pd.DataFrame({"a": [1.0], "name": ["bob"], "y": [0]}).to_csv(text, index=False)
    with pytest.raises(InputError, match="non-numeric feature column\\(s\\) name"):
        load_dataset(text, label="y")


def test_bad_files_give_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"bad.npz: not a readable .npz archive"):
        load_dataset(tmp_path / "bad.npz")
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    with pytest.raises(InputError, match=r"bad.parquet: not a readable Parquet file"):
        load_dataset(tmp_path / "bad.parquet")
    (tmp_path / "x.txt").write_text("1,2")
    with pytest.raises(InputError, match=r"x.txt: unsupported data file"):
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(InputError, match=r"missing.csv: no such data file"):
        load_dataset(tmp_path / "missing.csv")
    np.save(tmp_path / "obj.npy", np.array(["a", "b"]))
    with pytest.raises(InputError, match="features must be numeric"):
        load_dataset(tmp_path / "obj.npy")
    np.savez(tmp_path / "short.npz", x=np.ones((3, 2)), y=np.array([0, 1]))
    with pytest.raises(InputError, match="3 rows of features but 2 labels"):
        load_dataset(tmp_path / "short.npz")


def test_image_folder_one_sub_folder_per_class(tmp_path: Path) -> None:
    for label, value in (("cat", 0), ("dog", 255)):
        (tmp_path / label).mkdir()
        for i in range(2):
            Image.new("RGB", (5, 4), (value, value, value)).save(tmp_path / label / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.x.shape == (4, 3, 4, 5) and data.y.tolist() == [0, 0, 1, 1]
    assert data.classes == ("cat", "dog") and data.x.max() == 1.0
    Image.new("RGB", (6, 4)).save(tmp_path / "dog" / "odd.png")
    with pytest.raises(InputError, match=r"odd.png: image is 6x4 but earlier ones are 5x4"):
        load_dataset(tmp_path)


def test_integer_labels_keep_their_numbering_when_a_class_is_absent(tmp_path: Path) -> None:
    np.savez(tmp_path / "subset.npz", x=np.ones((3, 2)), y=np.array([0, 2, 2]))
    data = load_dataset(tmp_path / "subset.npz")
    assert data.y.tolist() == [0, 2, 2] and data.classes == (0, 1, 2)
    np.savez(tmp_path / "signed.npz", x=np.ones((2, 2)), y=np.array([-1, 1]))
    assert load_dataset(tmp_path / "signed.npz").y.tolist() == [0, 1]
