"""Personal data in datasets: `scan_pii(path)` and `bastion data pii PATH`.

Finds e-mail addresses, phone numbers, payment cards, IBANs, US SSNs, IP addresses and
dates of birth in CSV, Parquet, JSON Lines and text files, per column, with masked
examples; streams the file in chunks and scans chunks in parallel processes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bastion.data.pii.readers import read_chunks
from bastion.data.pii.rules import RULES
from bastion.data.pii.scanner import ColumnHits, scan_chunk
from bastion.errors import InputError
from bastion.findings import Finding, Location

__all__ = ["PiiReport", "scan_pii"]

ENTITIES = tuple(RULES)
# Starting a worker process costs about a second (imports); below this many bytes per
# process the work is done sooner in this one.
MIN_BYTES_PER_PROCESS = 16 << 20


@dataclass(frozen=True)
class PiiReport:
    path: str
    rows: int
    bytes: int
    seconds: float
    columns: dict[str, ColumnHits]
    findings: list[Finding]

    def count(self, entity: str, column: str | None = None) -> int:
        """Matches of `entity` in one column or in all of them."""
        columns = [self.columns[column]] if column is not None else self.columns.values()
        return sum(hits.counts.get(entity, 0) for hits in columns if hits)

    def metrics(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "bytes": self.bytes,
            "seconds": round(self.seconds, 4),
            "mb_per_s": round(self.bytes / 1e6 / max(self.seconds, 1e-9), 2),
            "columns": {
                name: {
                    entity: {
                        "matches": hits.counts[entity],
                        "rows": len(hits.rows[entity]),
                        "examples": hits.examples[entity],
                    }
                    for entity in ENTITIES
                    if hits.counts.get(entity)
                }
                for name, hits in self.columns.items()
            },
        }


def scan_pii(
    path: str | os.PathLike[str],
    *,
    jobs: int | None = None,
    chunk_rows: int = 20_000,
    region: str = "US",
    max_examples: int = 3,
) -> PiiReport:
    """Scan a CSV, Parquet, JSON Lines or text file for personal data.

    `jobs` processes scan chunks of `chunk_rows` rows (default: all cores, one per 16 MiB
    of file; 1 scans in this process). Phone numbers without a country code are read as
    `region`'s.
    """
    source = Path(path)
    if not source.is_file():
        what = "a folder; name a file" if source.is_dir() else "no such file"
        raise InputError(f"{source}: {what}")
    started = time.perf_counter()
    columns: dict[str, ColumnHits] = {}
    rows = 0
    for result in _scan_chunks(source, jobs, chunk_rows, region, max_examples):
        rows += result.rows
        for name, hits in result.columns.items():
            columns.setdefault(name, ColumnHits()).merge(hits, max_examples)
    seconds = time.perf_counter() - started
    findings = _findings(str(source), columns, rows)
    return PiiReport(str(source), rows, source.stat().st_size, seconds, columns, findings)


def _scan_chunks(source: Path, jobs, chunk_rows, region, max_examples):
    chunks = read_chunks(source, chunk_rows)
    if jobs is None:
        by_size = source.stat().st_size // MIN_BYTES_PER_PROCESS
        workers = max(1, min(os.cpu_count() or 1, by_size))
    else:
        workers = jobs
    if workers <= 1:
        for columns, offset in chunks:
            yield scan_chunk(columns, offset, region, max_examples)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator",
                        pre_dispatch="2*n_jobs")
    tasks = (delayed(scan_chunk)(c, o, region, max_examples) for c, o in chunks)
    yield from parallel(tasks)


def _findings(path: str, columns: dict[str, ColumnHits], rows: int) -> list[Finding]:
    findings = []
    for name, hits in columns.items():
        for entity in ENTITIES:
            count = hits.counts.get(entity, 0)
            if not count:
                continue
            with_hits = len(hits.rows[entity])
            title = (
                f"column {name!r}: {count} {entity.replace('_', ' ')} value(s) "
                f"in {with_hits} of {rows} rows"
            )
            evidence = {
                "column": name,
                "entity": entity,
                "matches": count,
                "rows": with_hits,
                "fraction_of_rows": round(with_hits / max(rows, 1), 6),
                "examples": list(hits.examples[entity]),
            }
            rule = RULES[entity]
            recheck = rule.remediation.replace("bastion data pii PATH", f"bastion data pii {path}")
            findings.append(
                rule.finding(title, Location(path, name), evidence=evidence, remediation=recheck)
            )
    return findings

