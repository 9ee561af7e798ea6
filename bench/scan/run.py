"""bench/scan: Bastion's scanner against modelscan, picklescan and fickling on one corpus.

    bash bench/setup-peers.sh && .venv/bin/python bench/scan/run.py [--corpus DIR] [--out FILE]

Builds (or reuses) the corpus, runs every tool's CLI on each part (verdicts and wall time,
start-up included), times the scan engines inside one already-started process each, prints
the tables, writes JSON and exits 1 when a target is missed. See bench/scan/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import PARTS, SMALL_COUNT, Corpus, ensure
from tools import (
    BASTION_ALL_CORES,
    BASTION_ONE_JOB,
    ENGINES,
    REPO,
    TOOLS,
    Engine,
    EngineTiming,
    Tool,
    Verdicts,
    missing_peers,
)

PART_LABELS = {
    "malicious": "malicious",
    "benign": "benign",
    "big": "1 GiB ckpt",
    "small": f"{SMALL_COUNT:,} pickles",
}
BENIGN_PARTS = ("benign", "big", "small")
WHOLE = "whole"
STARTUP = "startup"
TIMED = (*PARTS, WHOLE)  # what both measurements time: each part, then the whole corpus
TIMED_LABELS = {**PART_LABELS, WHOLE: "whole corpus"}
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


def run_engine(engine: Engine, corpus: Corpus, repeat: int) -> dict[str, EngineTiming]:
    """Each part, then the whole corpus, scanned in one process that imported the tool."""
    targets = [*(corpus.scan_target(p) for p in PARTS), corpus.files_root]
    timings = dict(zip(TIMED, engine.run(targets, repeat), strict=True))
    for key, t in timings.items():
        console.print(f"  {engine.name:<15} {TIMED_LABELS[key]:<14} {t.seconds:8.4f} s  "
                      f"(warm-up {t.warmup:.4f} s)  scanned {t.scanned}, flagged {t.flagged}")
    return timings


def engine_summary(timings: dict[str, dict[str, EngineTiming]]) -> dict:
    """Per engine: best and warm-up seconds, files scanned and flagged, per timed target."""
    summary = {}
    for name, per_target in timings.items():
        summary[name] = {
            "seconds": {k: round(t.seconds, 4) for k, t in per_target.items()},
            "warmup": {k: round(t.warmup, 4) for k, t in per_target.items()},
            "scanned": {k: t.scanned for k, t in per_target.items()},
            "flagged": {k: t.flagged for k, t in per_target.items()},
        }
    return summary


def ratio(peer: float, ours: float) -> float:
    return round(peer / ours, 2)


def cli_seconds(tool: dict, key: str) -> float:
    return tool["whole_corpus_seconds"] if key == WHOLE else tool["seconds"][key]


def ratios(tools: dict, engine: dict) -> list[dict]:
    """Peer time / bastion time, per part and whole corpus: above 1, bastion is faster.
    Only peers with an engine: fickling's CLI row already runs in one process."""
    rows = []
    for peer in engine:
        if peer in (BASTION_ALL_CORES, BASTION_ONE_JOB):
            continue
        rows.append({"peer": peer, "measurement": "CLI",
                     "ratios": {k: ratio(cli_seconds(tools[peer], k),
                                         cli_seconds(tools["bastion"], k)) for k in TIMED}})
        for ours in (BASTION_ALL_CORES, BASTION_ONE_JOB):
            rows.append({"peer": peer, "measurement": f"engine vs {ours}",
                         "ratios": {k: ratio(engine[peer]["seconds"][k],
                                             engine[ours]["seconds"][k]) for k in TIMED}})
    return rows


def engine_disagreements(engine: dict, verdicts: dict[str, dict[str, Verdicts]]) -> list[str]:
    """Where bastion's engine flags a different number of files than its CLI did: the two
    measurements must be of the same scan."""
    cli = verdicts["bastion"]
    return [f"{name} {TIMED_LABELS[k]}: engine {engine[name]['flagged'][k]}, "
            f"CLI {len(cli[k].flagged)}"
            for name in (BASTION_ALL_CORES, BASTION_ONE_JOB) for k in TIMED
            if engine[name]["flagged"][k] != len(cli[k].flagged)]


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


def evaluate(tools: dict, engine: dict) -> dict[str, dict]:
    ours = tools["bastion"]
    peers = [t for t in tools if t != "bastion"]
    big_engine = engine[BASTION_ALL_CORES]["seconds"]["big"]
    whole = {name: engine[name]["seconds"][WHOLE]
             for name in (BASTION_ALL_CORES, BASTION_ONE_JOB, "picklescan")}
    speedup = whole["picklescan"] / whole[BASTION_ALL_CORES]
    speedup_jobs1 = whole["picklescan"] / whole[BASTION_ONE_JOB]
    speedup_cli = tools["picklescan"]["whole_corpus_seconds"] / ours["whole_corpus_seconds"]
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
            "value": f"{ours['seconds']['big']:.3f} s (engine {big_engine:.4f} s)",
        },
        "whole corpus >= 2x faster than picklescan (engine, bastion default jobs)": {
            "pass": speedup >= SPEEDUP_TARGET,
            "value": (f"engine {speedup:.2f}x ({whole['picklescan']:.3f} s / "
                      f"{whole[BASTION_ALL_CORES]:.3f} s); engine jobs=1 {speedup_jobs1:.2f}x; "
                      f"CLI {speedup_cli:.2f}x (not judged)"),
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


def print_engine(engine: dict) -> None:
    table = Table(title="bench/scan engines: the scan call inside one started process "
                  "(best of --repeat after a warm-up, seconds)")
    for column in ("engine", *TIMED_LABELS.values()):
        table.add_column(column, justify="left" if column == "engine" else "right",
                         no_wrap=True)
    for name, e in engine.items():
        table.add_row(name, *(f"{e['seconds'][k]:.4f}" for k in TIMED))
    console.print(table)


def print_ratios(rows: list[dict]) -> None:
    table = Table(title="Peer time / bastion time (above 1: bastion is faster)")
    for column in ("peer", "measurement", *TIMED_LABELS.values()):
        table.add_column(column, justify="left" if column in ("peer", "measurement")
                         else "right", no_wrap=True)
    for row in rows:
        table.add_row(row["peer"], row["measurement"],
                      *(f"{row['ratios'][k]:.2f}x" for k in TIMED))
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
    lines += ["", "Engine (seconds, best of --repeat after a warm-up, one started process):", "",
              "| engine | " + " | ".join(TIMED_LABELS.values()) + " |",
              "| --- " * (1 + len(TIMED)) + "|"]
    for name, e in results["engine"].items():
        lines.append(f"| {name} | " + " | ".join(f"{e['seconds'][k]:.4f}" for k in TIMED)
                     + " |")
    lines += ["", "Peer time / bastion time (above 1: bastion is faster):", "",
              "| peer | measurement | " + " | ".join(TIMED_LABELS.values()) + " |",
              "| --- " * (2 + len(TIMED)) + "|"]
    for row in results["ratios"]:
        lines.append(f"| {row['peer']} | {row['measurement']} | "
                     + " | ".join(f"{row['ratios'][k]:.2f}x" for k in TIMED) + " |")
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
    engine = engine_summary({e.name: run_engine(e, corpus, args.repeat) for e in ENGINES})
    if corpus.marker.exists():
        raise SystemExit(f"{corpus.marker} appeared: a payload ran during the benchmark")
    tools = summarise(corpus, verdicts, versions)
    ratio_rows = ratios(tools, engine)
    disagreements = engine_disagreements(engine, verdicts)
    for line in disagreements:
        console.print(f"bastion engine and CLI disagree: {line}")
    targets = evaluate(tools, engine)
    matrix = detection_matrix(corpus, verdicts)
    print_tools(tools)
    print_engine(engine)
    print_ratios(ratio_rows)
    print_matrix(matrix, list(tools))
    print_details(tools, targets)
    results = {
        "corpus": {"root": str(corpus.root),
                   "files": {p: len(corpus.files(p)) for p in PARTS},
                   "big_checkpoint_bytes": corpus.big_checkpoint.stat().st_size},
        "machine": machine(),
        "repeat": args.repeat,
        "tools": tools,
        "engine": engine,
        "ratios": ratio_rows,
        "bastion_engine_cli_disagreements": disagreements,
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
