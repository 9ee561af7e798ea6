"""bench/serve: requests/s and latency of `bastion serve` against the same model behind a
bare FastAPI endpoint, with load from a second process on loopback.

    nice -n 10 .venv/bin/python bench/serve/run.py [--seconds 4] [--rounds 5] [--out FILE]

The model is logistic regression on scikit-learn's digits (64 inputs, 10 classes); each
request carries one held-out row. Servers run one at a time, one uvicorn worker each (same
HTTP stack for all), in interleaved rounds. Each round gives each gateway a ratio to the bare
server measured just before it; the targets are judged on the median of those ratios over the
rounds (and on the median p50 latencies), which pairs measurements taken under the same load
on a shared machine. The best round per server and the server's CPU time per request (from
/proc, during the throughput phase, steadier than requests/s) are shown too. The gateway
runs with everything on: API key, per-address and per-key token buckets, daily budget,
schema checks, the extraction monitor (action `log`, since the benchmark's replayed rows
would rightly be flagged), an audit file and Prometheus metrics. Latency is measured with
one connection (no queueing), throughput with --concurrency connections. Targets (issue 8):
memory store >= 80% of bare throughput and p50 overhead < 1 ms; Redis store >= 60%. Exit 1
when a target is missed.
Writes bench/serve/results.json; see docs/benchmarks-serve.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import joblib
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "src"))

from bastion.serve.auth import KeyFile  # noqa: E402

TARGET_MEMORY_RATIO = 0.8
TARGET_REDIS_RATIO = 0.6
TARGET_P50_OVERHEAD_MS = 1.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(folder: Path) -> tuple[Path, Path, str]:
    x, y = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=3000).fit(x[:1500], y[:1500])
    model_path = folder / "digits.joblib"
    joblib.dump(model, model_path)
    body = folder / "body.json"
    body.write_text(json.dumps({"inputs": [x[1600].tolist()]}))
    keys = KeyFile.load(folder / "keys.json", create=True)
    _, token = keys.create("bench", rate=1e9, burst=10**9, daily_budget=10**12)
    keys.save()
    return model_path, body, token


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            httpx.get(url + "/openapi.json", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_redis(folder: Path) -> tuple[subprocess.Popen, str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly",
         "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return process, f"redis://127.0.0.1:{port}/0"


def server_command(kind: str, port: int, model: Path, folder: Path, redis_url: str | None):
    if kind == "bare":
        return [sys.executable, "-m", "uvicorn", "bare_app:app", "--app-dir", str(HERE),
                "--port", str(port), "--log-level", "warning"]
    command = [sys.executable, "-c", "from bastion.cli.main import main; main()", "serve",
               str(model), "--keys", str(folder / "keys.json"), "--port", str(port),
               "--input-range", "0:16", "--monitor", "log", "--client-rate", "1e9",
               "--client-burst", str(10**9), "--audit", str(folder / f"audit-{kind}.jsonl")]
    if kind == "gateway-redis":
        command += ["--store", redis_url]
    return command


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(kind: str, model: Path, body: Path, token: str, folder: Path,
            redis_url: str | None, seconds: float, concurrency: int) -> dict:
    port = free_port()
    env = {**os.environ, "BENCH_MODEL": str(model), "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(server_command(kind, port, model, folder, redis_url), env=env)
    url = f"http://127.0.0.1:{port}/predict"
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        load = [sys.executable, str(HERE / "load.py"), url, str(body), "--key", token]
        subprocess.run([*load, "--concurrency", "4", "--seconds", "1"], check=True,
                       capture_output=True)  # warm-up
        latency = json.loads(subprocess.run(
            [*load, "--concurrency", "1", "--seconds", str(seconds)], check=True,
            capture_output=True, text=True).stdout)
        cpu_before = cpu_seconds(process.pid)
        throughput = json.loads(subprocess.run(
            [*load, "--concurrency", str(concurrency), "--seconds", str(seconds)], check=True,
            capture_output=True, text=True).stdout)
        cpu_ms = 1000 * (cpu_seconds(process.pid) - cpu_before) / max(1, throughput["requests"])
    finally:
        process.terminate()
        process.wait(10)
    if latency["errors"] or throughput["errors"]:
        raise RuntimeError(f"{kind}: non-200 answers under load: {latency} {throughput}")
    return {"p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
            "rps": throughput["rps"], "cpu_ms": round(cpu_ms, 3),
            "loaded_p50_ms": throughput["p50_ms"],
            "loaded_p99_ms": throughput["p99_ms"]}


def best(rounds: list[dict]) -> dict:
    return {"best_rps": max(r["rps"] for r in rounds),
            "cpu_ms": min(r["cpu_ms"] for r in rounds),
            "p50_ms": min(r["p50_ms"] for r in rounds),
            "p99_ms": min(r["p99_ms"] for r in rounds),
            "loaded_p50_ms": min(r["loaded_p50_ms"] for r in rounds),
            "loaded_p99_ms": min(r["loaded_p99_ms"] for r in rounds),
            "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", default=str(HERE / "results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, body, token = prepare(folder)
        redis = start_redis(folder)
        kinds = ["bare", "gateway-memory"] + (["gateway-redis"] if redis else [])
        results: dict[str, list[dict]] = {k: [] for k in kinds}
        try:
            for _ in range(args.rounds):
                for kind in kinds:
                    results[kind].append(measure(kind, model, body, token, folder,
                                                 redis[1] if redis else None, args.seconds,
                                                 args.concurrency))
        finally:
            if redis:
                redis[0].terminate()
                redis[0].wait(10)
    summary = {kind: best(rounds) for kind, rounds in results.items()}
    bare_rounds = results["bare"]
    print(f"{'server':<16} {'req/s':>8} {'ratio':>6} {'best req/s':>10} {'cpu ms/req':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} {'loaded p50':>10} {'loaded p99':>10}")
    for kind, row in summary.items():
        rounds = results[kind]
        row["ratios"] = [round(r["rps"] / b["rps"], 3)
                         for r, b in zip(rounds, bare_rounds, strict=True)]
        row["ratio"] = round(statistics.median(row["ratios"]), 3)
        row["rps"] = round(statistics.median(r["rps"] for r in rounds), 1)
        row["median_p50_ms"] = round(statistics.median(r["p50_ms"] for r in rounds), 3)
        row["p50_overhead_ms"] = round(
            row["median_p50_ms"] - statistics.median(b["p50_ms"] for b in bare_rounds), 3)
        print(f"{kind:<16} {row['rps']:>8.0f} {row['ratio']:>6.2f} {row['best_rps']:>10.0f} "
              f"{row['cpu_ms']:>10.3f} {row['median_p50_ms']:>7.2f} "
              f"{row['p99_ms']:>7.2f} {row['p50_overhead_ms']:>8.2f} "
              f"{row['loaded_p50_ms']:>10.2f} {row['loaded_p99_ms']:>10.2f}")
    targets = {
        "memory_ratio": summary["gateway-memory"]["ratio"] >= TARGET_MEMORY_RATIO,
        "memory_p50_overhead": summary["gateway-memory"]["p50_overhead_ms"]
        < TARGET_P50_OVERHEAD_MS,
    }
    if "gateway-redis" in summary:
        targets["redis_ratio"] = summary["gateway-redis"]["ratio"] >= TARGET_REDIS_RATIO
    print("targets:", ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    Path(args.out).write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "results": summary, "targets": targets,
    }, indent=2) + "\n")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
