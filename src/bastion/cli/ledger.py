"""`bastion ledger init|append|log|verify|prove|checkpoint|export`: the tamper-evident record
of what was done to models and data. A failed verification exits 1 with one line; unusable
input (missing or corrupt ledger, wrong key) exits 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from rich.markup import escape

from bastion.cli.common import err_console, friendly_errors
from bastion.errors import InputError, UsageError
from bastion.fsutil import atomic_write
from bastion.govern.checkpoint import load_private_key, load_public_key
from bastion.govern.events import Event, Subject, default_actor, subject_for_file
from bastion.govern.ledger import Entry, Ledger, LedgerTampered, init_ledger, key_paths, record

ledger_app = typer.Typer(
    help="A tamper-evident ledger (RFC 9162 Merkle log) of what was done to models and data.",
    no_args_is_help=True,
)

LedgerArgument = typer.Argument(..., help="The ledger file (SQLite).")
MAX_EVENT_FILE = 1 << 24
# List options live at module level: a mutable default in the signature would be shared.
SubjectOption = typer.Option([], "--subject", help="NAME=sha256:HEX. Repeatable.")
FileOption = typer.Option([], "--file", help="A file to record as subject. Repeatable.")
ParentOption = typer.Option([], "--parent", help="Input digest. Repeatable.")
TrustedCheckpointOption = typer.Option(
    [], "--checkpoint", help="A signed checkpoint kept elsewhere to check too. Repeatable."
)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno})") from None


def _read_event_file(path: str) -> Any:
    if path == "-":
        return _parse_json(sys.stdin.read(MAX_EVENT_FILE), "the event on stdin")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read event file {path}: {exc}") from None
    return _parse_json(text, f"event file {path}")


def _subject(text: str) -> Subject:
    name, separator, digest = text.rpartition("=")
    if not separator or not name:
        raise InputError(f"--subject {text!r} must be NAME=sha256:HEX")
    return Subject(name, digest)


def _event_from_options(
    kind: str | None,
    actor: str | None,
    time: str | None,
    subjects: list[str],
    files: list[str],
    parents: list[str],
    details: str | None,
) -> Event:
    if kind is None:
        raise UsageError("give --kind (or the whole event with --event FILE)")
    document: dict[str, Any] = {
        "kind": kind,
        "actor": actor or default_actor(),
        "subjects": [_subject(s).to_json() for s in subjects]
        + [subject_for_file(f).to_json() for f in files],
        "parents": parents,
        "details": _parse_json(details, "--details") if details else {},
    }
    if time:
        document["time"] = time
    return Event.from_json(document)


@ledger_app.command("init")
@friendly_errors
def init_command(
    path: str = LedgerArgument,
    key: Optional[str] = typer.Option(  # noqa: UP045 - typer reads the annotation at run time
        None, "--key", "-k", help="Existing Ed25519 private key (PEM); default: generate one."
    ),
    origin: Optional[str] = typer.Option(  # noqa: UP045
        None, "--origin", help="The log's name in its checkpoints (default: random)."
    ),
) -> None:
    """Create an empty ledger and sign its first checkpoint."""
    ledger, generated, public = init_ledger(path, key, origin)
    with ledger:
        typer.echo(f"created ledger {path} (origin {ledger.origin})")
    if generated is not None:
        typer.echo(f"wrote {generated} (private checkpoint key, keep it secret) and {public}")
    else:
        typer.echo(f"wrote {public} (public checkpoint key)")


@ledger_app.command("append")
@friendly_errors
def append_command(
    path: str = LedgerArgument,
    kind: Optional[str] = typer.Option(  # noqa: UP045
        None,
        "--kind",
        help="scan, sign, verify, data-diff, train, assess, deploy, key-event, document.",
    ),
    actor: Optional[str] = typer.Option(None, "--actor", help="Who acted (default: user@host)."),  # noqa: UP045
    time: Optional[str] = typer.Option(None, "--time", help="UTC ISO-8601 (default: now)."),  # noqa: UP045
    subject: list[str] = SubjectOption,
    file: list[str] = FileOption,
    parent: list[str] = ParentOption,
    details: Optional[str] = typer.Option(None, "--details", help="A JSON object."),  # noqa: UP045
    event: Optional[str] = typer.Option(  # noqa: UP045
        None, "--event", help="The whole event as a JSON file ('-' for stdin)."
    ),
    key: Optional[str] = typer.Option(  # noqa: UP045
        None, "--key", "-k", help="Private key to sign a checkpoint (default: LEDGER.key)."
    ),
    checkpoint: bool = typer.Option(
        True, "--checkpoint/--no-checkpoint", help="Sign a checkpoint after appending."
    ),
) -> None:
    """Append one event, then sign a checkpoint when the key is at hand."""
    if event is not None:
        if kind or subject or file or parent or details or time:
            raise UsageError("--event gives the whole event; do not combine it with fields")
        entry = Event.from_json(_read_event_file(event))
    else:
        entry = _event_from_options(kind, actor, time, subject, file, parent, details)
    (index,), note = record(path, [entry], key, sign=checkpoint)
    signed = f", checkpoint signed at size {index + 1}" if note else ", no checkpoint signed"
    typer.echo(f"appended entry {index}{signed}")


def _line(entry: Entry) -> str:
    event = entry.event
    subjects = ", ".join(f"{s['name']} {s['digest'][:19]}" for s in event["subjects"])
    return f"{entry.index:>6}  {event['time']}  {event['kind']:<9}  {event['actor']}  {subjects}"


@ledger_app.command("log")
@friendly_errors
def log_command(
    path: str = LedgerArgument,
    subject: Optional[str] = typer.Option(  # noqa: UP045
        None, "--subject", help="Show the lineage of this digest (inputs and what used it)."
    ),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only events of this kind."),  # noqa: UP045
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the last N events."),  # noqa: UP045
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List events, or the lineage of one artifact."""
    with Ledger.open(path) as ledger:
        if subject is not None:
            entries = [
                e for e in ledger.lineage(subject) if kind is None or e.event["kind"] == kind
            ]
            entries = entries[-limit:] if limit is not None else entries
        else:
            entries = ledger.find(kind, limit)
    for entry in entries:
        typer.echo(json.dumps(entry.to_json(), sort_keys=True) if as_json else _line(entry))


def _public_key(path: str, key: str | None) -> Ed25519PublicKey:
    return load_public_key(key if key is not None else key_paths(path)[1])


@ledger_app.command("verify")
@friendly_errors
def verify_command(
    path: str = LedgerArgument,
    key: Optional[str] = typer.Option(  # noqa: UP045
        None, "--key", "-k", help="The ledger's public key (default: LEDGER.pub)."
    ),
    checkpoint: list[str] = TrustedCheckpointOption,
) -> None:
    """Recompute every hash and check it against the signed checkpoints."""
    Ledger.open(path).close()  # a missing or corrupt ledger is reported before its key
    public = _public_key(path, key)
    notes = []
    for note_path in checkpoint:
        try:
            notes.append(Path(note_path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read checkpoint {note_path}: {exc}") from None
    with Ledger.open(path) as ledger:
        try:
            result = ledger.verify(public, notes)
        except LedgerTampered as exc:
            err_console.print(
                f"[bold red]bastion: verification failed:[/] {escape(exc.message)}",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
    tail = f"; {result.unsigned} newer entries not yet signed" if result.unsigned else ""
    typer.echo(
        f"ledger OK: {result.size} entries, last checkpoint signs {result.checkpoint.size} "
        f"at {result.checkpoint.timestamp} ({result.checkpoints} checkpoints){tail}"
    )


@ledger_app.command("prove")
@friendly_errors
def prove_command(
    path: str = LedgerArgument,
    index: Optional[int] = typer.Option(None, "--index", help="Prove this entry is in the log."),  # noqa: UP045
    size: Optional[int] = typer.Option(None, "--size", help="Tree size (default: current)."),  # noqa: UP045
    consistency: Optional[tuple[int, int]] = typer.Option(  # noqa: UP045
        None, "--consistency", help="OLD NEW: prove the tree of size OLD is a prefix of NEW."
    ),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the proof here."),  # noqa: UP045
) -> None:
    """Print an inclusion or consistency proof (JSON) for `verify_proof`."""
    if (index is None) == (consistency is None):
        raise UsageError("give either --index I or --consistency OLD NEW")
    if consistency is not None and size is not None:
        raise UsageError("--size goes with --index; --consistency takes both sizes")
    with Ledger.open(path) as ledger:
        if index is not None:
            proof = ledger.inclusion_proof(index, size)
        else:
            old, new = consistency  # type: ignore[misc]
            proof = ledger.consistency_proof(old, new)
    text = json.dumps(proof, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    if out:
        atomic_write(out, text)
    else:
        sys.stdout.write(text)


@ledger_app.command("checkpoint")
@friendly_errors
def checkpoint_command(
    path: str = LedgerArgument,
    key: Optional[str] = typer.Option(  # noqa: UP045
        None, "--key", "-k", help="The ledger's private key (default: LEDGER.key)."
    ),
) -> None:
    """Sign the current tree size and root; print the checkpoint note."""
    private = load_private_key(key if key is not None else key_paths(path)[0])
    with Ledger.open(path) as ledger:
        note = ledger.checkpoint(private)
    sys.stdout.write(note)


@ledger_app.command("export")
@friendly_errors
def export_command(
    path: str = LedgerArgument,
    out: str = typer.Option(..., "--out", "-o", help="JSON Lines file to write."),
) -> None:
    """Write every entry and the latest signed checkpoint as JSON Lines."""
    with Ledger.open(path) as ledger:
        written = ledger.export(out)
        size = ledger.size
    typer.echo(f"wrote {written} ({size} entries and the latest checkpoint)")
