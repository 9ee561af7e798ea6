"""bench/scan: Bastion's scanner against modelscan, picklescan and fickling on one corpus.

    bash bench/setup-peers.sh && .venv/bin/python bench/scan/run.py [--corpus DIR] [--out FILE]

Builds (or reuses) the corpus, runs every tool on each part, prints the tables, writes JSON
and exits 1 when a target is missed. See bench/scan/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import PARTS, SMALL_COUNT, Corpus, ensure
from tools import REPO, TOOLS, Tool, Verdicts, missing_peers

PART_LABELS = {
    "malicious": "malicious",
    "benign": "benign",
    "big": "1 GiB ckpt",
    "small": f"{SMALL_COUNT:,} pickles",
}
BENIGN_PARTS = ("benign", "big", "small")
WHOLE = "whole"
STARTUP = "startup"
BIG_SECONDS_TARGET = 1.0
SPEEDUP_TARGET = 2.0

console = Console(highlight=False, width=max(Console().width, 190))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="/tmp/bastion-bench-scan",
                        help="corpus folder, built when missing (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "scan" / "results.json"),
                        help="JSON results file (default: bench/scan/results.json)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs per tool and part; the fastest counts (default: 3)")
    parser.add_argument("--markdown", help="also write the tables as Markdown to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def timed(tool: Tool, target: Path, files: list[Path], repeat: int, label: str) -> Verdicts:
    """Verdicts from the first run; time from the fastest of `repeat` runs."""
    runs = [tool.run(target, files) for _ in range(repeat)]
    first = runs[0]
    first.seconds = min(r.seconds for r in runs)
    console.print(f"  {tool.name:<10} {label:<14} {first.seconds:8.3f} s  "
                  f"flagged {len(first.flagged)}/{len(files)}")
    return first


def run_tool(tool: Tool, corpus: Corpus, repeat: int) -> dict[str, Verdicts]:
    """One run per part, then one run over the whole corpus (a single process, as a user
    scanning a model store would start it)."""
    results = {
        part: timed(tool, corpus.scan_target(part), corpus.files(part), repeat,
                    PART_LABELS[part])
        for part in PARTS
    }
    results[WHOLE] = timed(tool, corpus.files_root, corpus.all_files(), repeat, "whole corpus")
    results[STARTUP] = timed(tool, corpus.empty, [], repeat, "empty folder")
    return results


def in_process_big_seconds(corpus: Corpus) -> float:
    """bastion.scan() on the big checkpoint inside this process: the scan without the
    interpreter start-up that the CLI timing includes."""
    import bastion

    timings = []
    for _ in range(3):
        started = time.perf_counter()
        bastion.scan(corpus.big_checkpoint)
        timings.append(time.perf_counter() - started)
    return min(timings)


def rel(corpus: Corpus, paths: set[Path]) -> list[str]:
    return sorted(str(p.relative_to(corpus.root)) for p in paths)


def summarise(corpus: Corpus, verdicts: dict[str, dict[str, Verdicts]],
              versions: dict[str, str]) -> dict:
    malicious = set(corpus.files("malicious"))
    benign_total = sum(len(corpus.files(p)) for p in BENIGN_PARTS)
    caught_by_bastion = verdicts["bastion"]["malicious"].flagged
    tools = {}
    for name, parts in verdicts.items():
        flagged_benign = set().union(*(parts[p].flagged for p in BENIGN_PARTS))
        flagged_in_parts = set().union(*(parts[p].flagged for p in PARTS))
        detected = parts["malicious"].flagged & malicious
        tools[name] = {
            "version": versions[name],
            "malicious_detected": len(detected),
            "malicious_total": len(malicious),
            "benign_flagged": len(flagged_benign),
            "benign_total": benign_total,
            "errors": sum(len(parts[p].errors) for p in PARTS),
            "seconds": {p: round(parts[p].seconds, 4) for p in PARTS},
            "sum_of_parts_seconds": round(sum(parts[p].seconds for p in PARTS), 4),
            "whole_corpus_seconds": round(parts[WHOLE].seconds, 4),
            "startup_seconds": round(parts[STARTUP].seconds, 4),
            "malicious_missed": rel(corpus, malicious - detected),
            "benign_flagged_files": rel(corpus, flagged_benign),
            "error_files": rel(corpus, set().union(*(parts[p].errors for p in PARTS))),
            "detected_but_missed_by_bastion": rel(corpus, detected - caught_by_bastion),
            # the one-process run over the whole corpus must judge every file the same way
            "whole_run_disagrees": rel(corpus, parts[WHOLE].flagged ^ flagged_in_parts),
        }
    return tools


def evaluate(tools: dict, big_api_seconds: float) -> dict[str, dict]:
    ours = tools["bastion"]
    peers = [t for t in tools if t != "bastion"]
    speedup = tools["picklescan"]["whole_corpus_seconds"] / ours["whole_corpus_seconds"]
    speedup_parts = tools["picklescan"]["sum_of_parts_seconds"] / ours["sum_of_parts_seconds"]
    missed_vs_peers = {p: tools[p]["detected_but_missed_by_bastion"] for p in peers}
    return {
        "every malicious file detected": {
            "pass": ours["malicious_detected"] == ours["malicious_total"],
            "value": f"{ours['malicious_detected']}/{ours['malicious_total']}",
        },
        "zero benign flagged": {
            "pass": ours["benign_flagged"] == 0,
            "value": f"{ours['benign_flagged']}/{ours['benign_total']}",
        },
        "every file a peer detects also detected": {
            "pass": not any(missed_vs_peers.values()),
            "value": sum(len(v) for v in missed_vs_peers.values()),
        },
        "1 GiB checkpoint < 1 s (CLI)": {
            "pass": ours["seconds"]["big"] < BIG_SECONDS_TARGET,
            "value": f"{ours['seconds']['big']:.3f} s (in-process {big_api_seconds:.3f} s)",
        },
        "whole corpus >= 2x faster than picklescan": {
            "pass": speedup >= SPEEDUP_TARGET,
            "value": f"{speedup:.2f}x (sum of the four part runs: {speedup_parts:.2f}x)",
        },
    }


def print_tools(tools: dict) -> None:
    table = Table(title="bench/scan: one corpus, every tool (wall time, seconds)")
    for column in ("tool", "malicious detected", "benign flagged", "errors",
                   *PART_LABELS.values(), "sum of parts", "whole corpus", "start-up"):
        table.add_column(column, justify="left" if column == "tool" else "right", no_wrap=True)
    for name, t in tools.items():
        table.add_row(
            f"{name} {t['version']}",
            f"{t['malicious_detected']}/{t['malicious_total']}",
            f"{t['benign_flagged']}/{t['benign_total']}",
            str(t["errors"]),
            *(f"{t['seconds'][p]:.3f}" for p in PARTS),
            f"{t['sum_of_parts_seconds']:.3f}",
            f"{t['whole_corpus_seconds']:.3f}",
            f"{t['startup_seconds']:.3f}",
        )
    console.print(table)


def print_matrix(matrix: dict[str, dict[str, str]], tools: list[str]) -> None:
    table = Table(title="Malicious files: detected by (✓), missed (·), error (!)")
    table.add_column("file")
    for name in tools:
        table.add_column(name, justify="center")
    for path, marks in matrix.items():
        table.add_row(path, *(marks[t] for t in tools))
    console.print(table)


def print_details(tools: dict, targets: dict) -> None:
    for name, t in tools.items():
        if t["benign_flagged_files"]:
            shown = t["benign_flagged_files"][:8]
            more = len(t["benign_flagged_files"]) - len(shown)
            console.print(f"benign flagged by {name}: {', '.join(shown)}"
                          + (f" (+{more} more)" if more else ""))
        if name != "bastion":
            missed = t["detected_but_missed_by_bastion"]
            console.print(f"detected by {name}, missed by bastion: "
                          + (", ".join(missed) if missed else "none"))
    table = Table(title="Targets")
    for column in ("target", "value", "result"):
        table.add_column(column)
    for label, result in targets.items():
        table.add_row(label, str(result["value"]), "PASS" if result["pass"] else "FAIL")
    console.print(table)


def markdown(results: dict, matrix: dict[str, dict[str, str]]) -> str:
    """The tables as Markdown, for docs/benchmarks.md."""
    labels = [*PART_LABELS.values(), "sum of parts", "whole corpus", "start-up"]
    lines = [
        "| tool | malicious detected | benign flagged | errors | " + " | ".join(labels) + " |",
        "| --- " * (4 + len(labels)) + "|",
    ]
    for name, t in results["tools"].items():
        times = [t["seconds"][p] for p in PARTS]
        times += [t["sum_of_parts_seconds"], t["whole_corpus_seconds"], t["startup_seconds"]]
        lines.append(
            f"| {name} {t['version']} | {t['malicious_detected']}/{t['malicious_total']} | "
            f"{t['benign_flagged']}/{t['benign_total']} | {t['errors']} | "
            + " | ".join(f"{v:.3f}" for v in times) + " |"
        )
    lines += ["", "| target | value | result |", "| --- | --- | --- |"]
    for label, result in results["targets"].items():
        lines.append(f"| {label} | {result['value']} | {'PASS' if result['pass'] else 'FAIL'} |")
    tools = list(results["tools"])
    lines += ["", "| malicious file | " + " | ".join(tools) + " |", "| --- " * (1 + len(tools))
              + "|"]
    for path, marks in matrix.items():
        lines.append(f"| {path} | " + " | ".join(marks[t] for t in tools) + " |")
    return "\n".join(lines) + "\n"


def detection_matrix(corpus: Corpus, verdicts: dict[str, dict[str, Verdicts]]
                     ) -> dict[str, dict[str, str]]:
    """Per malicious file and tool: detected, missed or error."""
    matrix = {}
    for path in corpus.files("malicious"):
        marks = {}
        for name, parts in verdicts.items():
            v = parts["malicious"]
            marks[name] = "✓" if path in v.flagged else "!" if path in v.errors else "·"
        matrix[str(path.relative_to(corpus.part("malicious")))] = marks
    return matrix


def machine() -> dict[str, object]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpus": os.cpu_count(), "cpu": model, "platform": platform.platform(),
            "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_peers()
    if missing:
        console.print(f"peers not installed ({', '.join(missing)}): run bash bench/setup-peers.sh")
        return 2
    corpus = Corpus(Path(args.corpus).resolve())
    if corpus.marker.exists():
        console.print(f"{corpus.marker} exists: a payload ran in an earlier run. Investigate, "
                      "delete it, then rerun.")
        return 2
    ensure(corpus, console.print)
    versions = {tool.name: tool.version() for tool in TOOLS}
    verdicts = {}
    for tool in TOOLS:
        verdicts[tool.name] = run_tool(tool, corpus, args.repeat)
    big_api_seconds = in_process_big_seconds(corpus)
    if corpus.marker.exists():
        raise SystemExit(f"{corpus.marker} appeared: a payload ran during the benchmark")
    tools = summarise(corpus, verdicts, versions)
    targets = evaluate(tools, big_api_seconds)
    matrix = detection_matrix(corpus, verdicts)
    print_tools(tools)
    print_matrix(matrix, list(tools))
    print_details(tools, targets)
    results = {
        "corpus": {"root": str(corpus.root),
                   "files": {p: len(corpus.files(p)) for p in PARTS},
                   "big_checkpoint_bytes": corpus.big_checkpoint.stat().st_size},
        "machine": machine(),
        "repeat": args.repeat,
        "tools": tools,
        "bastion_in_process_big_seconds": round(big_api_seconds, 4),
        "targets": targets,
        "marker_absent": not corpus.marker.exists(),
        "detection_matrix": matrix,
    }
    Path(args.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(results, matrix))
    console.print(f"results written to {args.out}")
    return 0 if all(t["pass"] for t in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
