"""Scanning one chunk of columns: the unit of work a process gets.

A column chunk is joined into one string with NUL between values, so each pattern runs once
per chunk instead of once per cell; match offsets map back to rows by binary search. No
pattern matches NUL, so no match spans two values.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from bastion.data.pii.entities import (
    DATE_VALUE,
    DOB_COLUMN,
    DOB_IN_TEXT,
    SSN_BARE,
    SSN_COLUMN,
    Entity,
    mask_date,
    text_entities,
)

SEPARATOR = "\x00"


@dataclass
class ColumnHits:
    """What one column holds: matches and rows per entity, a few masked examples."""

    counts: Counter = field(default_factory=Counter)
    rows: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, entity: str, row: int, masked: str, max_examples: int) -> None:
        self.counts[entity] += 1
        self.rows[entity].add(row)
        if len(self.examples[entity]) < max_examples and masked not in self.examples[entity]:
            self.examples[entity].append(masked)

    def merge(self, other: ColumnHits, max_examples: int) -> None:
        self.counts.update(other.counts)
        for entity, rows in other.rows.items():
            self.rows[entity] |= rows
        for entity, examples in other.examples.items():
            mine = self.examples[entity]
            mine.extend(e for e in examples if e not in mine)
            del mine[max_examples:]


@dataclass
class ChunkResult:
    columns: dict[str, ColumnHits]
    rows: int
    bytes: int


def scan_chunk(
    columns: dict[str, list[str]], row_offset: int, region: str, max_examples: int
) -> ChunkResult:
    """Find personal data in each column of a chunk whose first row is `row_offset`."""
    entities = text_entities(region)
    result: dict[str, ColumnHits] = {}
    size = rows = 0
    for name, values in columns.items():
        rows = max(rows, len(values))
        text = SEPARATOR.join(values)
        size += len(text)
        hits = ColumnHits()
        starts = np.cumsum([0] + [len(v) + 1 for v in values[:-1]])
        column_entities = (SSN_BARE, *entities) if SSN_COLUMN.search(name) else entities
        birth_dates = bool(DOB_COLUMN.search(name))
        if birth_dates:  # every date in the column counts, called a birth date or not
            column_entities = tuple(e for e in column_entities if e is not DOB_IN_TEXT)
        _scan_text(text, starts, row_offset, column_entities, hits, max_examples)
        if birth_dates:
            _dates_of_birth(values, row_offset, hits, max_examples)
        if hits.counts:
            result[name] = hits
    return ChunkResult(result, rows, size)


def _scan_text(
    text: str,
    starts: np.ndarray,
    row_offset: int,
    entities: tuple[Entity, ...],
    hits: ColumnHits,
    max_examples: int,
) -> None:
    claimed = bytearray(len(text))  # 1 where an earlier (stronger) entity matched
    for entity in entities:
        if entity.needs and entity.needs not in text:
            continue
        for match in entity.pattern.finditer(text):
            value = match.group(entity.group)
            begin, end = match.span(entity.group)
            if claimed.find(1, begin, end) != -1:
                continue
            valid = entity.valid(value)
            if valid or entity.claims_shape:
                claimed[begin:end] = b"\x01" * (end - begin)
            if not valid:
                continue
            row = row_offset + int(np.searchsorted(starts, begin, side="right")) - 1
            hits.add(entity.name, row, entity.mask(value), max_examples)


def _dates_of_birth(values: list[str], row_offset: int, hits: ColumnHits, limit: int) -> None:
    """A column named for birth dates: every value that reads as a date is one."""
    for index, value in enumerate(values):
        match = DATE_VALUE.match(value.strip())
        if match:
            hits.add("date_of_birth", row_offset + index, mask_date(match.group(0)), limit)

