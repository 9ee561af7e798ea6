"""How each scanner is run and how its verdict on each file is read.

Every tool runs as its own process, pointed at a folder (or the big checkpoint), the way a
user would run it; the wall time of that process is what is measured. Verdicts are read
per file from the tool's own report:

- bastion:    `bastion scan TARGET --format json`; a file is flagged when a finding at
              `high` or above names it (the default `--fail-on`).
- modelscan:  `modelscan scan -p TARGET -r json`; a file is flagged when any issue names it
              as its source (modelscan exits 1 for any issue). Entries in `errors` count as
              errors.
- picklescan: `picklescan -p TARGET`; a file is flagged when picklescan prints a
              "dangerous import ... FOUND" line for it (what makes it exit 1); "ERROR: parsing
              pickle in" lines count as errors. Default mode, not --strict.
- fickling:   its CLI takes one raw pickle at a time, so fickling_driver.py walks the target
              in one process with fickling's scan_file / scan_zip_archive (the same analysis
              as `fickling --check-safety`, plus zip support). A file is flagged when an
              analysed pickle is above LIKELY_SAFE (the CLI's exit 1); a file fickling could
              not parse at all counts as an error (the CLI's exit 2).

Engines (bastion, modelscan, picklescan) are timed apart from their CLIs: engine_driver.py,
run under the tool's venv, imports the tool once and times only its scan call.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PEER_BIN = REPO / ".venv-bench" / "bin"


@dataclass
class Verdicts:
    """One tool's reading of one scan target."""

    seconds: float
    flagged: set[Path] = field(default_factory=set)
    errors: set[Path] = field(default_factory=set)
    returncode: int = 0


@dataclass(frozen=True)
class Tool:
    name: str
    version: Callable[[], str]
    # (target, folder for the tool's report) -> (argv, the exit codes that mean "it ran")
    command: Callable[[Path, Path], tuple[list[str], set[int]]]
    # (target, report folder, captured stdout) -> (flagged ids, error ids) as the tool names them
    read: Callable[[Path, Path, str], tuple[set[str], set[str]]]

    def run(self, target: Path, files: list[Path]) -> Verdicts:
        with tempfile.TemporaryDirectory(prefix=f"bench-{self.name}-") as workdir:
            argv, ok_codes = self.command(target, Path(workdir))
            started = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=workdir,
                                  check=False)
            seconds = time.perf_counter() - started
            if proc.returncode not in ok_codes:
                raise RuntimeError(
                    f"{self.name} exited {proc.returncode} on {target}:\n{proc.stderr[-2000:]}"
                )
            flagged, errors = self.read(target, Path(workdir), proc.stdout)
        owners = FileIndex(target, files)
        return Verdicts(seconds, owners.resolve_all(flagged), owners.resolve_all(errors),
                        proc.returncode)


class FileIndex:
    """Maps the names a tool prints (absolute, relative to the target, or `file:member` for
    archive members) back to the corpus file they belong to."""

    def __init__(self, target: Path, files: list[Path]) -> None:
        self.base = target if target.is_dir() else target.parent
        self.by_name = {str(f.resolve()): f for f in files}

    def resolve(self, ident: str) -> Path:
        candidate = ident if ident.startswith("/") else str(self.base / ident)
        while True:
            path = str(Path(candidate).resolve())
            if path in self.by_name:
                return self.by_name[path]
            if ":" not in candidate:
                raise KeyError(f"cannot map {ident!r} to a corpus file")
            candidate = candidate.rsplit(":", 1)[0]  # drop an archive member suffix

    def resolve_all(self, idents: set[str]) -> set[Path]:
        return {self.resolve(i) for i in idents}


def package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


# --- bastion --------------------------------------------------------------------------------

BLOCKING = {"high", "critical"}


def bastion_command(target: Path, workdir: Path) -> tuple[list[str], set[int]]:
    exe = Path(sys.executable).with_name("bastion")
    report = workdir / "report.json"
    return [str(exe), "scan", str(target), "--format", "json", "--out", str(report)], {0, 1}


def bastion_read(target: Path, workdir: Path, stdout: str) -> tuple[set[str], set[str]]:
    report = json.loads((workdir / "report.json").read_text())
    flagged = {f["location"]["path"] for f in report["findings"] if f["severity"] in BLOCKING}
    return flagged, set()


# --- modelscan ------------------------------------------------------------------------------


def modelscan_command(target: Path, workdir: Path) -> tuple[list[str], set[int]]:
    report = workdir / "report.json"
    argv = [str(PEER_BIN / "modelscan"), "scan", "-p", str(target), "-r", "json",
            "-o", str(report)]
    # 0 clean, 1 issues found, 2 scan errors, 3 no supported files
    return argv, {0, 1, 2, 3}


def modelscan_read(target: Path, workdir: Path, stdout: str) -> tuple[set[str], set[str]]:
    report = json.loads((workdir / "report.json").read_text())
    flagged = {issue["source"] for issue in report.get("issues", [])}
    errors = {e["source"] for e in report.get("errors", []) if e.get("source")}
    if target.is_file():  # modelscan names a single target by its file name
        flagged = {str(target.parent / s) for s in flagged}
        errors = {str(target.parent / s) for s in errors}
    return flagged, errors


# --- picklescan -----------------------------------------------------------------------------

PICKLESCAN_DANGEROUS = re.compile(r"^(?P<id>.+): dangerous import '.*' FOUND", re.MULTILINE)
PICKLESCAN_ERROR = re.compile(r"^ERROR: parsing pickle in (?P<id>.+?): ", re.MULTILINE)


def picklescan_command(target: Path, workdir: Path) -> tuple[list[str], set[int]]:
    return [str(PEER_BIN / "picklescan"), "-p", str(target)], {0, 1, 2}


def picklescan_read(target: Path, workdir: Path, stdout: str) -> tuple[set[str], set[str]]:
    flagged = {m["id"] for m in PICKLESCAN_DANGEROUS.finditer(stdout)}
    errors = {m["id"] for m in PICKLESCAN_ERROR.finditer(stdout)}
    return flagged, errors


# --- fickling -------------------------------------------------------------------------------


def fickling_command(target: Path, workdir: Path) -> tuple[list[str], set[int]]:
    argv = [str(PEER_BIN / "python"), str(HERE / "fickling_driver.py"), str(target),
            str(workdir / "report.json")]
    return argv, {0}


def fickling_read(target: Path, workdir: Path, stdout: str) -> tuple[set[str], set[str]]:
    report = json.loads((workdir / "report.json").read_text())
    return set(report["flagged"]), set(report["errors"])


TOOLS = [
    Tool("bastion", lambda: package_version(Path(sys.executable), "bastion-ml"),
         bastion_command, bastion_read),
    Tool("modelscan", lambda: package_version(PEER_BIN / "python", "modelscan"),
         modelscan_command, modelscan_read),
    Tool("picklescan", lambda: package_version(PEER_BIN / "python", "picklescan"),
         picklescan_command, picklescan_read),
    Tool("fickling", lambda: package_version(PEER_BIN / "python", "fickling"),
         fickling_command, fickling_read),
]


# --- engines: the scan call alone, inside one already-started process ---------------------


@dataclass
class EngineTiming:
    """One engine's fastest scan of one target, after a warm-up scan."""

    seconds: float
    warmup: float
    scanned: int  # files (or archive members) scanned, as the tool counts them
    flagged: int  # files the tool judged dangerous


@dataclass(frozen=True)
class Engine:
    """A tool imported once in its own venv by engine_driver.py, which times the tool's scan
    function on every target in that one process: no interpreter or import start-up."""

    name: str
    python: Path
    tool: str
    jobs: int | None = None

    def run(self, targets: list[Path], repeat: int) -> list[EngineTiming]:
        argv = [str(self.python), str(HERE / "engine_driver.py"), self.tool,
                *(str(t) for t in targets), "--repeat", str(repeat)]
        if self.jobs is not None:
            argv += ["--jobs", str(self.jobs)]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"engine {self.name} exited {proc.returncode}:\n"
                               f"{proc.stderr[-2000:]}")
        return [EngineTiming(min(t["seconds"]), t["warmup"], t["scanned"], t["flagged"])
                for t in json.loads(proc.stdout)["targets"]]


BASTION_ALL_CORES = "bastion (all cores)"  # bastion.scan()'s default jobs
BASTION_ONE_JOB = "bastion (jobs=1)"
# fickling has none: fickling_driver.py already runs it in one process (its CLI row)
ENGINES = [
    Engine(BASTION_ALL_CORES, Path(sys.executable), "bastion"),
    Engine(BASTION_ONE_JOB, Path(sys.executable), "bastion", jobs=1),
    Engine("modelscan", PEER_BIN / "python", "modelscan"),
    Engine("picklescan", PEER_BIN / "python", "picklescan"),
]


def missing_peers() -> list[str]:
    needed = [PEER_BIN / "modelscan", PEER_BIN / "picklescan", PEER_BIN / "python"]
    return [str(p) for p in needed if not p.exists()]
