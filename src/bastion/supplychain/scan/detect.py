"""Content detection: which format scanners apply to a stream, judged by bytes, never by
the file name. A polyglot (a pickle with a zip appended) is scanned as every format it
parses as, because different loaders will read it differently."""

from __future__ import annotations

from typing import BinaryIO

from bastion.findings import Finding, Location
from bastion.supplychain.scan import rules
from bastion.supplychain.scan.context import LimitExceeded, ScanContext
from bastion.supplychain.scan.formats import FORMATS, HEAD_BYTES, FormatScanner


def detect(head: bytes, stream: BinaryIO) -> list[FormatScanner]:
    """Format scanners whose signature matches; the stream is left at offset 0."""
    matched = []
    for fmt in FORMATS:
        stream.seek(0)
        if fmt.sniff(head, stream):
            matched.append(fmt)
            if fmt.exclusive:
                break
    stream.seek(0)
    return matched


def describe(head: bytes) -> str:
    """A short name for content no scanner claims, for the 'skipped' report."""
    if not head:
        return "empty file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data"
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        return "JSON or text"
    return "text"


def dispatch(stream: BinaryIO, loc: Location, ctx: ScanContext) -> list[Finding]:
    """Scan a seekable stream with every format scanner that recognises it."""
    try:
        stream.seek(0)
        head = stream.read(HEAD_BYTES)
        matched = detect(head, stream)
        if not matched:
            if ctx.depth == 0:
                return [
                    rules.SKIPPED.finding(
                        f"Skipped: {describe(head)} carries nothing the scanner checks",
                        loc,
                        evidence={"detected": describe(head)},
                    )
                ]
            return []
        findings: list[Finding] = []
        for fmt in matched:
            ctx.formats.append(fmt.name)
            stream.seek(0)
            findings.extend(fmt.scan(stream, loc, ctx))
        return findings
    except LimitExceeded as exc:
        return [rules.limit_finding(str(exc), loc)]
    except (OSError, EOFError, ValueError, MemoryError, RecursionError) as exc:
        return [rules.unreadable_finding(f"{type(exc).__name__}: {exc}", loc)]

