"""`bastion sign`, `bastion verify` and `bastion keys generate`: signed models and datasets in
the OpenSSF model-signing format. A failed verification exits 1 with one line saying what is
wrong; unusable input exits 2."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from bastion.cli.common import (
    LedgerOption,
    check_ledger,
    err_console,
    friendly_errors,
    record_files,
)
from bastion.errors import InputError
from bastion.supplychain.sign import (
    DEFAULT_SHARD_SIZE,
    VerificationError,
    default_signature_path,
    generate_key_pair,
    sign,
    verify,
)

F = TypeVar("F", bound=Callable[..., Any])

PASSPHRASE_ENV = "BASTION_KEY_PASSPHRASE"

PassphraseEnvOption = typer.Option(
    PASSPHRASE_ENV,
    "--passphrase-env",
    help="Environment variable holding the private key's passphrase (else: prompt).",
)
AllowSymlinksOption = typer.Option(
    False, "--allow-symlinks", help="Hash symlinked files as their targets instead of refusing."
)
IgnoreOption = typer.Option(
    [],
    "--ignore",
    help="Leave out paths matching this shell pattern (relative to PATH; a pattern without '/' "
    "matches names at any depth). Repeatable.",
)
WorkersOption = typer.Option(
    None, "--workers", help="Hashing threads (default: cores + 4, to overlap disk reads)."
)
EmbedChainOption = typer.Option(
    [], "--certificate-chain", help="Intermediate certificates to embed (PEM). Repeatable."
)
TrustChainOption = typer.Option(
    [],
    "--certificate-chain",
    help="Trusted root (and intermediate) certificates (PEM) for a certificate-signed bundle, "
    "instead of --key. Repeatable.",
)


def verification_failures(command: F) -> F:
    """A failed verification is one line on stderr and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VerificationError as exc:
            err_console.print(
                f"[bold red]bastion: verification failed:[/] {escape(exc.message)}",
                soft_wrap=True,
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _secret_from_env(env_name: str) -> str | None:
    value = os.environ.get(env_name)
    return value if value else None


def _prompt_for(key: str) -> Callable[[], str] | None:
    if not sys.stdin.isatty():
        return None
    return lambda: typer.prompt(f"Passphrase for {key}", hide_input=True)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


@friendly_errors
def sign_command(
    path: str = typer.Argument(..., help="The model or dataset: a folder or a single file."),
    key: str = typer.Option(..., "--key", "-k", help="Elliptic-curve private key (PEM)."),
    signature: str | None = typer.Option(
        None,
        "--signature",
        "-s",
        help="Where to write the signature (default: PATH/model.sig, or FILE.sig for a file).",
    ),
    ignore: list[str] = IgnoreOption,
    method: str = typer.Option(
        "files",
        "--method",
        help="files: one digest per file (what `model_signing verify` checks by default); "
        "shards: one per --shard-size bytes, so one large file hashes on every core.",
    ),
    hash_type: str = typer.Option("sha256", "--hash", help="sha256, blake2b or blake3."),
    shard_size: int = typer.Option(DEFAULT_SHARD_SIZE, "--shard-size", help="Bytes per shard."),
    allow_symlinks: bool = AllowSymlinksOption,
    certificate: str | None = typer.Option(
        None, "--certificate", help="Sign under this X.509 certificate (PEM) for the key."
    ),
    certificate_chain: list[str] = EmbedChainOption,
    passphrase_env: str = PassphraseEnvOption,
    workers: int | None = WorkersOption,
    ledger: LedgerOption = None,
) -> None:
    """Sign a model or dataset folder (or one file) into an OpenSSF model-signing bundle."""
    check_ledger(ledger)
    result = sign(
        path,
        key,
        signature,
        method=method,
        hash_type=hash_type,
        shard_size=shard_size,
        ignore=ignore,
        allow_symlinks=allow_symlinks,
        certificate=certificate,
        certificate_chain=certificate_chain,
        passphrase=_secret_from_env(passphrase_env),
        ask_passphrase=_prompt_for(key),
        workers=workers,
    )
    typer.echo(
        f"signed {result.path}: {result.files} files, {_size(result.bytes)}, "
        f"{result.method}/{result.hash_type} -> {result.signature} ({result.seconds:.2f} s)"
    )
    details = {"path": str(result.path), "files": result.files, "method": result.method,
               "hash": result.hash_type}
    record_files(ledger, "sign", [str(result.signature)], details)


@friendly_errors
@verification_failures
def verify_command(
    path: str = typer.Argument(..., help="The model or dataset: a folder or a single file."),
    key: str | None = typer.Option(None, "--key", "-k", help="Public key (PEM) of the signer."),
    signature: str | None = typer.Option(
        None,
        "--signature",
        "-s",
        help="The signature to check (default: PATH/model.sig, or FILE.sig for a file).",
    ),
    certificate_chain: list[str] = TrustChainOption,
    ignore: list[str] = IgnoreOption,
    allow_symlinks: bool = AllowSymlinksOption,
    workers: int | None = WorkersOption,
    ledger: LedgerOption = None,
) -> None:
    """Verify a model or dataset against its signature; exit 1 and say what differs if not."""
    check_ledger(ledger)
    try:
        result = verify(
            path,
            key,
            signature,
            certificate_chain=certificate_chain,
            ignore=ignore,
            allow_symlinks=allow_symlinks,
            workers=workers,
        )
    except VerificationError as exc:
        # A failed verification is worth recording too (the signature may be missing).
        details = {"path": path, "verified": False, "reason": exc.message}
        record_files(ledger, "verify", [str(signature or default_signature_path(path))], details)
        raise
    typer.echo(
        f"verified {result.path}: {result.files} files, {_size(result.bytes)}, "
        f"{result.method}/{result.hash_type}, signed by {result.signer} "
        f"({result.seconds:.2f} s)"
    )
    details = {"path": str(result.path), "verified": True, "signer": str(result.signer)}
    record_files(ledger, "verify", [str(signature or default_signature_path(path))], details)


keys_app = typer.Typer(help="Create signing keys.", no_args_is_help=True)


def _new_passphrase(env_name: str) -> str:
    secret = _secret_from_env(env_name)
    if secret:
        return secret
    if not sys.stdin.isatty():
        raise InputError(f"--encrypt needs a passphrase: set {env_name} or run in a terminal")
    return typer.prompt("Passphrase for the new key", hide_input=True, confirmation_prompt=True)


@keys_app.command("generate")
@friendly_errors
def keys_generate_command(
    out: str = typer.Option("key.pem", "--out", "-o", help="Private key file to write."),
    public: str | None = typer.Option(
        None, "--public", help="Public key file to write (default: OUT with suffix .pub)."
    ),
    curve: str = typer.Option("p256", "--curve", help="p256, p384 or p521."),
    encrypt: bool = typer.Option(
        False, "--encrypt", help="Encrypt the private key with a passphrase."
    ),
    passphrase_env: str = PassphraseEnvOption,
    force: bool = typer.Option(False, "--force", help="Replace existing key files."),
    ledger: LedgerOption = None,
) -> None:
    """Write a new elliptic-curve key pair (PEM) for `bastion sign` and `bastion verify`."""
    check_ledger(ledger)
    passphrase = _new_passphrase(passphrase_env) if encrypt else None
    private, public_path = generate_key_pair(
        out, public, curve=curve, passphrase=passphrase, overwrite=force
    )
    state = "encrypted" if passphrase else "unencrypted"
    typer.echo(f"wrote {private} ({state} private key, keep it secret) and {public_path}")
    # The public key only: the private one never enters the record.
    record_files(ledger, "key-event", [str(public_path)], {"action": "generate", "curve": curve})

