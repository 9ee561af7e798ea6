"""Time one scanner's engine inside an already-started Python process.

    python engine_driver.py TOOL --repeat N [--jobs N] TARGET...

Run under the tool's own venv (bastion: .venv; modelscan, picklescan: .venv-bench). The
tool is imported first, then each TARGET (a folder or a file) is scanned once to warm up
(imports a scanner makes on first use, page cache) and N more times. Prints JSON to stdout:

    {"tool": ..., "jobs": ..., "targets": [{"target": ..., "warmup": s, "seconds": [s, ...],
      "scanned": files scanned, "flagged": files judged dangerous}, ...]}

Only the scan call is timed: interpreter start-up, imports and report rendering are not.
Logging is disabled so that no tool pays for writing log lines to a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

# (target) -> (files scanned, files flagged), as the tool's own result object says
Scan = Callable[[str], tuple[int, int]]


def bastion_engine(jobs: int | None) -> Scan:
    import bastion
    from bastion.findings import Severity

    def scan(target: str) -> tuple[int, int]:
        result = bastion.scan(target, jobs=jobs)
        flagged = {f.location.path for f in result.blocking(Severity.HIGH)}
        return len(result.files), len(flagged)

    return scan


def picklescan_engine(jobs: int | None) -> Scan:
    from picklescan.scanner import scan_directory_path, scan_file_path

    def scan(target: str) -> tuple[int, int]:
        # the CLI's own choice for -p: a folder is walked, a file is scanned by itself
        scanner = scan_file_path if os.path.isfile(target) else scan_directory_path
        result = scanner(target)
        return result.scanned_files, result.infected_files

    return scan


def modelscan_engine(jobs: int | None) -> Scan:
    from modelscan.modelscan import ModelScan
    from modelscan.settings import DEFAULT_SETTINGS

    def scan(target: str) -> tuple[int, int]:
        scanner = ModelScan(settings=DEFAULT_SETTINGS)  # what the CLI builds per run
        scanner.scan(target)
        # an issue in an archive member names it `file:member`; count the file once
        flagged = {str(i.details.source).split(":")[0] for i in scanner.issues.all_issues}
        return len(scanner.scanned), len(flagged)

    return scan


ENGINES: dict[str, Callable[[int | None], Scan]] = {
    "bastion": bastion_engine,
    "picklescan": picklescan_engine,
    "modelscan": modelscan_engine,
}


def timed(scan: Scan, target: str) -> tuple[float, tuple[int, int]]:
    started = time.perf_counter()
    counts = scan(target)
    return time.perf_counter() - started, counts


def measure(scan: Scan, target: str, repeat: int) -> dict[str, object]:
    warmup, (scanned, flagged) = timed(scan, target)
    seconds = [timed(scan, target)[0] for _ in range(repeat)]
    return {"target": target, "warmup": warmup, "seconds": seconds,
            "scanned": scanned, "flagged": flagged}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tool", choices=sorted(ENGINES))
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="bastion only: processes (default: all cores)")
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)
    scan = ENGINES[args.tool](args.jobs)
    targets = [measure(scan, str(Path(t).resolve()), args.repeat) for t in args.targets]
    print(json.dumps({"tool": args.tool, "jobs": args.jobs, "targets": targets}))


if __name__ == "__main__":
    main()
