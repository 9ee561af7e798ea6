"""Rows per second of `bastion data diff` vs a pandas merge-based diff on the same pair of CSV
files (default about 1 GB each, generated seeded in a temporary folder): NEW is OLD with rows
deleted, inserted, edited and relabelled, written in another order. Each diff runs in its own
child process, which reports its own peak RSS. Writes bench/diff/results.json.

    python bench/diff/run.py [--mb 1024] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CHUNK = 500_000
BYTES_PER_ROW = 40  # of the generated rows, measured; sizes the row count to --mb


def _frame(ids: np.ndarray, rng: np.random.Generator):
    import pandas as pd

    n = len(ids)
    return pd.DataFrame(
        {
            "id": ids,
            "a": rng.normal(size=n).round(5),
            "b": rng.normal(size=n).round(5),
            "c": rng.integers(0, 100_000, n),
            "city": rng.choice(["paris", "lagos", "lima", "osaka", "perth"], n),
            "label": rng.integers(0, 10, n),
        }
    )


def generate(folder: Path, rows: int, seed: int) -> dict[str, int]:
    """OLD in id order; NEW with every 1000th row deleted, every 997th edited, every 1009th
    relabelled, 0.1% new rows, chunks in reverse order and rows shuffled within chunks."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.csv as pacsv

    rng = np.random.default_rng(seed)
    truth = {"removed": 0, "added": 0, "modified": 0}
    chunks = []
    with open(folder / "old.csv", "wb") as old:
        for start in range(0, rows, CHUNK):
            frame = _frame(np.arange(start, min(rows, start + CHUNK)), rng)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pacsv.write_csv(table, old, pacsv.WriteOptions(include_header=start == 0))
            chunks.append(start)
    rng = np.random.default_rng(seed)  # regenerate the same rows for NEW
    with open(folder / "new.csv", "wb") as new:
        frames = []
        for start in chunks:
            frames.append(_frame(np.arange(start, min(rows, start + CHUNK)), rng))
        for position, frame in enumerate(reversed(frames)):
            ids = frame["id"].to_numpy()
            edit = (ids % 997 == 1) & (ids % 1000 != 0)
            relabel = (ids % 1009 == 2) & (ids % 1000 != 0) & ~edit
            frame.loc[edit, "c"] = -1
            frame.loc[relabel, "label"] = (frame.loc[relabel, "label"] + 1) % 10
            frame = frame[ids % 1000 != 0]
            truth["removed"] += int((ids % 1000 == 0).sum())
            truth["modified"] += int(edit.sum() + relabel.sum())
            extra = _frame(rows + np.arange(len(ids) // 1000) + len(ids) * position, rng)
            truth["added"] += len(extra)
            frame = pd.concat([frame, extra]).sample(frac=1.0, random_state=seed + position)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            pacsv.write_csv(table, new, pacsv.WriteOptions(include_header=position == 0))
    return truth


def child_bastion(old: str, new: str) -> dict:
    from bastion.data.diff import diff_datasets

    start = time.perf_counter()
    result = diff_datasets(old, new, label="label", key="id")
    seconds = time.perf_counter() - start
    metrics = result.metrics()
    return {
        "seconds": seconds,
        "rows": metrics["old_rows"] + metrics["new_rows"],
        "removed": metrics["removed"],
        "added": metrics["added"],
        "modified": metrics["modified"],
    }


def child_pandas(old: str, new: str) -> dict:
    """The usual pandas way: load both, outer-merge on every column, then pair by key."""
    import pandas as pd

    start = time.perf_counter()
    a, b = pd.read_csv(old), pd.read_csv(new)
    merged = a.merge(b, how="outer", indicator=True)
    gone = merged.loc[merged["_merge"] == "left_only", "id"]
    came = merged.loc[merged["_merge"] == "right_only", "id"]
    modified = int(gone.isin(came).sum())
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "rows": len(a) + len(b),
        "removed": len(gone) - modified,
        "added": len(came) - modified,
        "modified": modified,
    }


def peak_rss_mb() -> float:
    """This process's own peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from
    the parent across fork and exec, which would charge the generator's memory to the diff."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(tool: str, old: Path, new: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(
        [sys.executable, __file__, "--child", tool, str(old), str(new)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode != 0:  # pandas can run out of memory on large files: say so
        last = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": f"exit {done.returncode}: {last}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs=3, metavar=("TOOL", "OLD", "NEW"))
    args = parser.parse_args()
    if args.child:
        tool, old, new = args.child
        result = (child_bastion if tool == "bastion" else child_pandas)(old, new)
        result["peak_rss_mb"] = peak_rss_mb()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
        print(json.dumps(result))
        return
    rows = args.mb * (1 << 20) // BYTES_PER_ROW
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as tmp:
        folder = Path(tmp)
        truth = generate(folder, rows, args.seed)
        size_mb = (folder / "old.csv").stat().st_size / (1 << 20)
        results = {
            tool: run_child(tool, folder / "old.csv", folder / "new.csv")
            for tool in ("bastion", "pandas")
        }
    ok = {tool: r for tool, r in results.items() if "error" not in r}
    for result in ok.values():
        result["rows_per_second"] = round(result["rows"] / result["seconds"])
        result["correct"] = all(result[k] == truth[k] for k in truth)
    both = len(ok) == 2
    ratio = ok["bastion"]["rows_per_second"] / ok["pandas"]["rows_per_second"] if both else None
    print(f"OLD.csv {size_mb:.0f} MB, {rows} rows; truth {truth}")
    print(f"{'tool':10} {'seconds':>8} {'rows/s':>10} {'peak MB':>8} correct")
    for tool, r in results.items():
        if "error" in r:
            print(f"{tool:10} {r['error']}")
            continue
        print(
            f"{tool:10} {r['seconds']:8.1f} {r['rows_per_second']:10d} "
            f"{r['peak_rss_mb']:8.0f} {r['correct']}"
        )
    if ratio is not None:
        print(f"bastion / pandas rows/s: {ratio:.2f}x")
    document = {
        "old_csv_mb": round(size_mb, 1),
        "rows": rows,
        "truth": truth,
        "results": results,
        "speedup": round(ratio, 2) if ratio is not None else None,
    }
    (HERE / "results.json").write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
