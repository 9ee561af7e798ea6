"""bench/audit: wall time of `bastion demo` and of `bastion audit` on the demo project, in
worker processes and as Ray tasks on a local 2-CPU Ray instance; the size of each report.

    .venv/bin/python bench/audit/run.py [--repeat 3] [--out bench/audit/results.json]

Each measurement is a fresh `bastion` process (what a user or CI job waits for), so import
and Ray start-up time count. `--ray local --jobs 2` starts a Ray instance with two CPUs in
the audit's own process and shuts it down after (never touching other Ray instances). The
issue's target: the demo in under 3 minutes on 2 cores. There is no peer tool that audits a
model project end to end, so the ratio reported is Ray's time over worker processes'.
Prints a table, writes JSON, exits 1 when the demo misses its target. See
docs/benchmarks-audit.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_TARGET_S = 180.0
FORMATS = ("html", "json", "sarif", "md")


def bastion(*args: str) -> tuple[float, int]:
    """Wall time and exit code of one `bastion` command in a fresh process."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-c", "from bastion.cli.main import main; main()", *args]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, done.returncode


def median_run(repeat: int, *args: str) -> dict[str, object]:
    times, codes = [], set()
    for _ in range(repeat):
        seconds, code = bastion(*args)
        times.append(seconds)
        codes.add(code)
    return {"median_s": round(statistics.median(times), 2), "runs_s": [round(t, 2) for t in times],
            "exit_codes": sorted(codes)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "audit" / "results.json"))
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        demo_dir = work / "demo"
        demo = median_run(options.repeat, "demo", "--dir", str(demo_dir))
        config = str(demo_dir / "bastion.toml")
        processes = median_run(options.repeat, "audit", "--config", config, "--out",
                               str(work / "proc"), "--jobs", "2")
        on_ray = median_run(options.repeat, "audit", "--config", config, "--out",
                            str(work / "ray"), "--ray", "local", "--jobs", "2")
        sizes = {fmt: (work / "proc" / f"audit.{fmt}").stat().st_size for fmt in FORMATS}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = [("bastion demo (build + audit + self-check)", demo),
            ("bastion audit, 2 worker processes", processes),
            ("bastion audit --ray local (2 CPUs)", on_ray)]
    print(f"{'run':45} {'median s':>9}  runs")
    for name, row in rows:
        print(f"{name:45} {row['median_s']:>9}  {row['runs_s']}")
    ratio = on_ray["median_s"] / processes["median_s"]
    print(f"Ray / processes: {ratio:.2f}x")
    print("report sizes: " + ", ".join(f"{fmt} {size / 1024:.1f} KiB"
                                       for fmt, size in sizes.items()))
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "repeat": options.repeat,
        "demo": demo,
        "audit_processes": processes,
        "audit_ray_local_2cpu": on_ray,
        "ray_over_processes": round(ratio, 2),
        "report_bytes": sizes,
        "targets": {"demo_s": DEMO_TARGET_S, "demo_met": demo["median_s"] < DEMO_TARGET_S},
    }
    Path(options.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {options.out}")
    return 0 if demo["median_s"] < DEMO_TARGET_S and demo["exit_codes"] == [0] else 1


if __name__ == "__main__":
    sys.exit(main())
