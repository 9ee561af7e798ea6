"""The public scan API: folders, parallel scanning, bad arguments."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from bastion.demo.malicious import os_system_pickle
from bastion.errors import InputError
from bastion.supplychain.scan import FILES_PER_WORKER, scan

# Files of `many` that hold a payload: spread so that several tasks of a parallel scan meet
# one, at the first and last place too.
PAYLOADS = (0, 100, 101, 257, 2 * FILES_PER_WORKER + 2)


@pytest.fixture
def many(tmp_path: Path, marker: Path) -> Path:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(2 * FILES_PER_WORKER + 3):
        (folder / f"{i:04d}.pkl").write_bytes(pickle.dumps({"i": i, "w": [i] * (i % 7)}))
    for i in PAYLOADS:
        (folder / f"{i:04d}.pkl").write_bytes(os_system_pickle(marker))
    return folder


def test_parallel_scan_matches_sequential(many: Path) -> None:
    sequential = scan(many, jobs=1)
    parallel = scan(many, jobs=2)
    assert [f.path for f in parallel.files] == [f.path for f in sequential.files]
    assert [(f.rule_id, f.title, f.location, f.evidence) for f in parallel.findings] == [
        (f.rule_id, f.title, f.location, f.evidence) for f in sequential.findings
    ]
    flagged = list(dict.fromkeys(Path(f.location.path).name for f in parallel.findings))
    assert flagged == [f"{i:04d}.pkl" for i in PAYLOADS]


def test_files_are_listed_in_a_stable_order(many: Path) -> None:
    names = [Path(f.path).name for f in scan(many, jobs=1).files]
    assert names == sorted(names)


@pytest.mark.parametrize("jobs", [0, -3])
def test_jobs_below_one_are_refused(many: Path, jobs: int) -> None:
    with pytest.raises(InputError, match="jobs must be at least 1"):
        scan(many, jobs=jobs)


def test_nothing_to_scan_is_an_input_error() -> None:
    with pytest.raises(InputError, match="nothing to scan"):
        scan()
