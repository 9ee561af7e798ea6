"""Run fickling over a file or folder in one process (its CLI takes one raw pickle per call).

Runs under .venv-bench's Python: `python fickling_driver.py TARGET REPORT.json`. Writes
{"flagged": [...], "errors": [...]} with the paths of the files fickling judges unsafe and of
the files it could not analyse. Uses fickling's public scan_file and scan_zip_archive, the
analysis behind `fickling --check-safety`; neither loads the pickle."""

from __future__ import annotations

import json
import os
import sys
import zipfile

import fickling
from fickling.analysis import Severity


def files_under(target: str) -> list[str]:
    if os.path.isfile(target):
        return [target]
    found = []
    for root, dirs, names in os.walk(target):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in sorted(names))
    return found


def verdict(path: str) -> str:
    """'unsafe', 'error' or 'safe', the way the CLI's exit codes 1, 2 and 0 would say."""
    if zipfile.is_zipfile(path):
        results = list(fickling.scan_zip_archive(path, graceful=True).values())
    else:
        results = [fickling.scan_file(path, graceful=True)]
    analysed = [a for r in results for a in r.results]
    if any(a.severity > Severity.LIKELY_SAFE for a in analysed):
        return "unsafe"
    if any(r.errors for r in results):
        return "error"
    return "safe"


def main(target: str, report: str) -> None:
    verdicts = {path: verdict(path) for path in files_under(target)}
    out = {
        "flagged": [p for p, v in verdicts.items() if v == "unsafe"],
        "errors": [p for p, v in verdicts.items() if v == "error"],
    }
    with open(report, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
