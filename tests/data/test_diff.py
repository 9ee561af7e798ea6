"""bastion.data.diff: exact row-level differences of shuffled, edited copies, in every format,
and `bastion data diff` through the real command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from bastion.cli.main import app
from bastion.data.diff import (
    DiffPolicy,
    changed_nodes,
    diff_datasets,
    diff_findings,
    merkle_levels,
)
from bastion.govern.ledger import Ledger

runner = CliRunner()
N = 600


def _frame(rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": np.arange(N),
            "a": rng.normal(size=N).round(4),
            "b": rng.integers(0, 50, N),
            "note": rng.choice(["x", "y,z", 'q"uote', "sep\x1fhere"], N),
            "label": rng.choice(["cat", "dog", "emu"], N),
        }
    )


def _edited(frame: pd.DataFrame, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    """A shuffled copy with known deletions, insertions, feature edits and label flips."""
    deleted = [5, 77, 400]
    feature_edit = [10, 250]
    label_flip = [33, 300, 555]
    new = frame.copy()
    new.loc[feature_edit, "a"] = new.loc[feature_edit, "a"] + 1000.5
    flips = {"cat": "dog", "dog": "emu", "emu": "cat"}
    new.loc[label_flip, "label"] = new.loc[label_flip, "label"].map(flips)
    new = new.drop(index=deleted)
    inserted = pd.DataFrame(
        {"id": [N, N + 1], "a": [0.5, -0.5], "b": [1, 2], "note": ["n", "m"], "label": "cat"}
    )
    new = pd.concat([new, inserted]).sample(frac=1.0, random_state=int(rng.integers(1 << 30)))
    truth = {
        "deleted": deleted,
        "feature_edit": feature_edit,
        "label_flip": label_flip,
        "inserted_ids": [N, N + 1],
    }
    return new[["label", "note", "b", "a", "id"]], truth  # column order changed too


@pytest.fixture
def versions(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    rng = np.random.default_rng(7)
    old = _frame(rng)
    new, truth = _edited(old, rng)
    return old, new, truth


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


def _new_rows_of(new: pd.DataFrame, ids: list[int]) -> list[int]:
    positions = {v: i for i, v in enumerate(new["id"].tolist())}
    return sorted(positions[i] for i in ids)


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_keyed_diff_finds_exactly_the_edits(tmp_path: Path, versions, suffix: str) -> None:
    old, new, truth = versions
    result = diff_datasets(
        _write(old, tmp_path / f"old{suffix}"),
        _write(new, tmp_path / f"new{suffix}"),
        label="label",
        key="id",
    )
    assert sorted(result.removed.tolist()) == truth["deleted"]
    assert result.added.tolist() == _new_rows_of(new, truth["inserted_ids"])
    modified_old = sorted(o for o, _, _, _ in result.modified)
    assert modified_old == sorted(truth["feature_edit"] + truth["label_flip"])
    relabelled = {o for o, _, a, b in result.modified if a != b}
    assert relabelled == set(truth["label_flip"])
    for o, n, _, _ in result.modified:  # each pair names the same row in both versions
        assert new["id"].iloc[n] == old["id"].iloc[o]


def test_without_key_relabels_pair_and_feature_edits_are_remove_plus_add(
    tmp_path: Path, versions
) -> None:
    old, new, truth = versions
    result = diff_datasets(
        _write(old, tmp_path / "old.csv"), _write(new, tmp_path / "new.csv"), label="label"
    )
    assert sorted(o for o, _, _, _ in result.modified) == truth["label_flip"]
    assert sorted(result.removed.tolist()) == sorted(truth["deleted"] + truth["feature_edit"])
    assert len(result.added) == len(truth["inserted_ids"]) + len(truth["feature_edit"])
    assert sum(result.label_changes.values()) == 3


def test_root_ignores_row_and_column_order_and_changes_with_content(tmp_path: Path) -> None:
    frame = _frame(np.random.default_rng(1))
    a = _write(frame, tmp_path / "a.csv")
    b = _write(
        frame.sample(frac=1.0, random_state=3)[list(frame.columns)[::-1]], tmp_path / "b.csv"
    )
    same = diff_datasets(a, b, label="label")
    assert same.identical and same.leaves_compared == 0
    frame.loc[0, "b"] += 1
    changed = diff_datasets(a, _write(frame, tmp_path / "c.csv"), label="label")
    assert not changed.identical
    assert changed.leaves_compared <= 2  # the localisation touched only the affected buckets


def test_duplicates_count_as_a_multiset(tmp_path: Path) -> None:
    frame = pd.DataFrame({"v": [1, 1, 1, 2], "label": [0, 0, 0, 1]})
    fewer = pd.DataFrame({"v": [1, 2, 2], "label": [0, 1, 1]})
    result = diff_datasets(
        _write(frame, tmp_path / "o.csv"), _write(fewer, tmp_path / "n.csv"), label="label"
    )
    assert len(result.removed) == 2 and len(result.added) == 1


def test_changed_nodes_descends_only_where_hashes_differ() -> None:
    leaves = [bytes([i]) * 32 for i in range(256)]
    edited = list(leaves)
    edited[17] = b"\xff" * 32
    edited[200] = b"\xfe" * 32
    tree, edited_tree = merkle_levels(leaves), merkle_levels(edited)
    assert changed_nodes(tree, edited_tree) == [17, 200]
    assert changed_nodes(tree, tree) == []


def test_npz_and_image_folder_diffs(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 3, 4)).astype(np.float32)
    y = rng.integers(0, 3, 50)
    np.savez(tmp_path / "old.npz", x=x, y=y)
    y2 = y.copy()
    y2[4] = (y2[4] + 1) % 3
    order = rng.permutation(50)
    np.savez(tmp_path / "new.npz", x=x[order], y=y2[order])
    result = diff_datasets(tmp_path / "old.npz", tmp_path / "new.npz")
    assert [(o, a, b) for o, _, a, b in result.modified] == [(4, str(y[4]), str(y2[4]))]
    assert len(result.added) == len(result.removed) == 0

    for version in ("v1", "v2"):
        for cls in ("ants", "bees"):
            (tmp_path / version / cls).mkdir(parents=True)
    pixels = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    for i in range(6):
        cls = "ants" if i < 3 else "bees"
        Image.fromarray(pixels[i]).save(tmp_path / "v1" / cls / f"{i}.png")
        moved = "bees" if i == 0 else cls  # image 0 is relabelled by moving it
        Image.fromarray(pixels[i] if i != 5 else 255 - pixels[i]).save(
            tmp_path / "v2" / moved / f"{i}.png"
        )
    images = diff_datasets(tmp_path / "v1", tmp_path / "v2")
    changes = {(a, b) for _, _, a, b in images.modified}
    assert changes == {("ants", "bees"), ("bees", "bees")}
    assert images.class_shift()["bees"]["new"] == 4


def test_findings_follow_policy(tmp_path: Path, versions) -> None:
    old, new, _ = versions
    result = diff_datasets(
        _write(old, tmp_path / "o.csv"), _write(new, tmp_path / "n.csv"), label="label", key="id"
    )
    strict = {f.rule_id for f in diff_findings(result, DiffPolicy(0.001, 0.0, 0.001))}
    assert strict == {"BST-DATA-001", "BST-DATA-002", "BST-DATA-003"}
    assert diff_findings(result, DiffPolicy(0.5, 0.5, 0.5)) == []


def test_cli_json_fail_on_and_ledger(tmp_path: Path, versions) -> None:
    old, new, _ = versions
    o, n = _write(old, tmp_path / "o.csv"), _write(new, tmp_path / "n.csv")
    ledger = tmp_path / "ledger.db"
    assert runner.invoke(app, ["ledger", "init", str(ledger)]).exit_code == 0
    args = ["data", "diff", str(o), str(n), "--label", "label", "--key", "id", "-f", "json"]
    result = runner.invoke(app, [*args, "--ledger", str(ledger)])
    assert result.exit_code == 1, result.output  # three label flips of 600 rows > 0.1%
    document = json.loads(result.stdout)
    assert document["metrics"]["modified"] == 5
    assert {f["rule_id"] for f in document["findings"]} >= {"BST-DATA-002"}
    with Ledger.open(ledger) as log:
        event = log.entry(log.size - 1).event
    assert event["kind"] == "data-diff"
    assert event["details"]["old"]["root"] == event["parents"][0]
    assert event["details"]["new"]["root"] == event["subjects"][0]["digest"]
    relaxed = runner.invoke(app, [*args, "--max-label-changes", "0.5", "--fail-on", "high"])
    assert relaxed.exit_code == 0, relaxed.output


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: p.write_text("a,b\n1,2\n"), ["--label", "nope"], "no label column 'nope'"),
        (lambda p: p.write_text("a,label\n1,2\n3,\n"), ["--label", "label"], "label of row 1"),
        (lambda p: p.write_text("whatever"), [], "unsupported data file"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path: Path, make, extra, message) -> None:
    bad = tmp_path / ("bad.txt" if message == "unsupported data file" else "bad.csv")
    make(bad)
    result = runner.invoke(app, ["data", "diff", str(bad), str(bad), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("image_folder", [False, True])
def test_cli_key_on_npz_or_images_is_one_line_exit_2(tmp_path: Path, image_folder: bool) -> None:
    if image_folder:
        data = tmp_path / "images"
        (data / "cats").mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(data / "cats" / "0.png")
    else:
        data = tmp_path / "d.npz"
        np.savez(data, x=np.zeros((3, 2)), y=np.arange(3), id=np.arange(3))
    result = runner.invoke(app, ["data", "diff", str(data), str(data), "--key", "id"])
    assert result.exit_code == 2
    assert "--key names a column of a CSV, Parquet or JSONL file" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_row_ids_tell_rows_apart_short_and_long() -> None:
    import pyarrow as pa

    from bastion.data.diff import FAST_WIDTH, row_ids

    rows = [b"", b"a", b"a\0", b"ab" * 8, b"ab" * 8 + b"c", b"x" * (FAST_WIDTH + 1)]
    rows.append(b"y" * (FAST_WIDTH + 1))
    ids = row_ids(pa.array(rows, pa.large_binary()))
    assert len(set(ids.tolist())) == len(rows)  # zero padding and length both count
    alone = [row_ids(pa.array([row], pa.large_binary()))[0] for row in rows]
    assert ids.tolist() == alone  # a row's id does not depend on its neighbours


def test_colliding_row_ids_never_hide_a_change(tmp_path: Path, versions, monkeypatch) -> None:
    """Row ids are not cryptographic: with ids cut to 16 bits (every row of a leaf shares
    one), the bytes decide, and the answer and the order independence stay the same."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from bastion.data import diff

    old, new, _ = versions
    o, n = _write(old, tmp_path / "o.csv"), _write(new, tmp_path / "n.csv")
    honest = diff_datasets(o, n, label="label", key="id")
    real = diff.row_ids
    monkeypatch.setattr(diff, "_key_ids", lambda keys: real(pc.cast(keys, pa.large_binary())))
    monkeypatch.setattr(diff, "row_ids", lambda rows: real(rows) & np.uint64(0xFFFF << 48))
    weak = diff_datasets(o, n, label="label", key="id")
    assert weak.modified == honest.modified
    assert weak.added.tolist() == honest.added.tolist()
    assert weak.removed.tolist() == honest.removed.tolist()
    shuffled = _write(old.sample(frac=1.0, random_state=5), tmp_path / "s.csv")
    assert diff_datasets(o, shuffled, label="label", key="id").identical


def test_spilling_to_disk_gives_the_same_answer(tmp_path: Path, versions, monkeypatch) -> None:
    old, new, _ = versions
    o, n = _write(old, tmp_path / "o.csv"), _write(new, tmp_path / "n.csv")
    in_memory = diff_datasets(o, n, label="label", key="id")
    monkeypatch.setattr("bastion.data.diff.SPILL_BYTES", 2000)
    spilled = diff_datasets(o, n, label="label", key="id", workdir=tmp_path)
    assert spilled.old.root == in_memory.old.root and spilled.new.root == in_memory.new.root
    assert spilled.modified == in_memory.modified
    assert spilled.added.tolist() == in_memory.added.tolist()
    assert not list(tmp_path.glob("bastion-diff-*"))  # the spill folder is removed
