"""`bastion serve MODEL | --upstream URL` and `bastion api-keys create|list|revoke`."""

from __future__ import annotations

import ipaddress
import socket
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from bastion.cli.common import LedgerOption, check_ledger, err_console, friendly_errors
from bastion.errors import UsageError

if TYPE_CHECKING:
    from bastion.serve.auth import ApiKey

api_keys_app = typer.Typer(
    help="API keys for the `bastion serve` gateway (stored hashed, shown once).",
    no_args_is_help=True,
)

KeysFileOption = Annotated[
    str, typer.Option("--keys", help="The gateway's API key file (JSON, hashes only).")
]


def _parse_pair(text: str | None, what: str) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"{what} {text!r}: expected LOW:HIGH, e.g. 0:1") from None
    if not low < high:
        raise UsageError(f"{what} {text!r}: LOW must be below HIGH")
    return low, high


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(d) for d in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape {text!r}: expected positive integers, e.g. 64 or 1,28,28")
    return shape


def is_loopback(host: str) -> bool:
    """True only when every address `host` resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise UsageError(f"--host {host!r} does not resolve") from None
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(host: str, tls: bool, insecure: bool) -> None:
    """Refuse to expose plain HTTP beyond this machine unless told so, loudly."""
    if is_loopback(host) or tls:
        return
    if not insecure:
        raise UsageError(
            f"refusing to serve plain HTTP on {host}: give --tls-cert/--tls-key, bind "
            "127.0.0.1, or pass --insecure if a TLS proxy in front really handles it"
        )
    err_console.print(
        f"[bold red]WARNING: serving plain HTTP on {host} (--insecure): API keys and "
        "queries cross the network unencrypted.[/]"
    )


@friendly_errors
def serve_command(
    model: Annotated[
        Optional[str],  # noqa: UP045 - typer reads the annotation at run time
        typer.Argument(help="Model file to serve (scanned and, with --verify-key, verified)."),
    ] = None,
    keys: KeysFileOption = "bastion-keys.json",
    upstream: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--upstream", help="Guard this Open Inference Protocol server instead.")] = None,
    upstream_model: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--upstream-model", help="Model name on the upstream server.")] = None,
    name: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--name", help="Model name in /v2/models/NAME (default: file stem).")] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    tls_cert: Annotated[Optional[str], typer.Option("--tls-cert")] = None,  # noqa: UP045
    tls_key: Annotated[Optional[str], typer.Option("--tls-key")] = None,  # noqa: UP045
    tls_client_ca: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--tls-client-ca", help="Require client certificates signed by this CA (mTLS).")] = None,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Allow plain HTTP on a non-loopback address.")] = False,
    store: Annotated[str, typer.Option(
        "--store", help="memory, or redis://HOST:PORT/DB to share state across replicas.")
    ] = "memory",
    output_policy: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--output-policy",
        help="label, top-k:K, round:DECIMALS, reverse-sigmoid[:BETA[:GAMMA]]; repeatable.")
    ] = None,
    monitor: Annotated[str, typer.Option(
        "--monitor", help="On an extraction alert: log, throttle, block, or off.")] = "block",
    input_shape: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--input-shape", help="Per-row input shape, e.g. 64 or 3,32,32.")] = None,
    input_range: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--input-range", help="Allowed input values LOW:HIGH.")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="Bytes.")] = 1 << 20,
    max_batch: Annotated[int, typer.Option("--max-batch")] = 256,
    client_rate: Annotated[float, typer.Option(
        "--client-rate", help="Requests/s per client address.")] = 50.0,
    client_burst: Annotated[int, typer.Option("--client-burst")] = 100,
    cors_origin: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--cors-origin", help="Allow browser calls from this origin (closed by default).")
    ] = None,
    audit: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--audit", help="Append one JSON line per decision to this file.")] = None,
    ledger: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--ledger", help="Record decisions (batched) in this ledger.")] = None,
    verify_key: Annotated[Optional[str], typer.Option(  # noqa: UP045
        "--verify-key", help="Verify the model's signature with this public key first.")
    ] = None,
) -> None:
    """Serve a model behind API keys, limits, output hardening and an extraction monitor."""
    import uvicorn

    from bastion.serve.gateway import build_app

    if (model is None) == (upstream is None):
        raise UsageError("give either a MODEL file or --upstream URL")
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if tls_client_ca and not tls_cert:
        raise UsageError("--tls-client-ca needs --tls-cert/--tls-key")
    check_bind(host, bool(tls_cert), insecure)
    app = build_app(
        model=model, upstream=upstream, upstream_model=upstream_model, name=name, keys=keys,
        store=store, policies=output_policy or [], monitor=monitor,
        input_shape=_parse_shape(input_shape),
        input_range=_parse_pair(input_range, "--input-range"), max_body=max_body,
        max_batch=max_batch, client_rate=client_rate, client_burst=client_burst,
        cors_origins=cors_origin or [], audit=audit, ledger=ledger, verify_key=verify_key,
    )
    ssl_options = {}
    if tls_cert:
        import ssl

        ssl_options = {"ssl_certfile": tls_cert, "ssl_keyfile": tls_key}
        if tls_client_ca:
            ssl_options |= {"ssl_ca_certs": tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(app, host=host, port=port, server_header=False, proxy_headers=False,
                log_level="warning", **ssl_options)


@api_keys_app.command("create")
@friendly_errors
def create_key(
    name: Annotated[str, typer.Option("--name", help="Who or what the key is for.")],
    keys: KeysFileOption = "bastion-keys.json",
    scope: Annotated[Optional[list[str]], typer.Option(  # noqa: UP045
        "--scope", help="infer, metadata, metrics (repeatable; default infer + metadata).")
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="Requests/s.")] = 10.0,
    burst: Annotated[int, typer.Option("--burst")] = 20,
    daily_budget: Annotated[int, typer.Option("--daily-budget", help="Queries per day.")] = 10_000,
    ledger: LedgerOption = None,
) -> None:
    """Create a key; it is printed once and only its hash is stored."""
    from bastion.govern.events import utc_now
    from bastion.serve.auth import KeyFile

    check_ledger(ledger)
    store = KeyFile.load(keys, create=True)
    key, token = store.create(name, scopes=tuple(scope or ("infer", "metadata")), rate=rate,
                              burst=burst, daily_budget=daily_budget, created=utc_now())
    store.save()
    _record_key_event(ledger, key, "create")
    err_console.print(f"created key {key.id} ({name}); store it now, it is not shown again:")
    typer.echo(token)


@api_keys_app.command("list")
@friendly_errors
def list_keys(keys: KeysFileOption = "bastion-keys.json") -> None:
    """List keys (never their secrets)."""
    import json

    from bastion.serve.auth import KeyFile

    for key in KeyFile.load(keys).keys.values():
        typer.echo(json.dumps(key.public()))


@api_keys_app.command("revoke")
@friendly_errors
def revoke_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `list`).")],
    keys: KeysFileOption = "bastion-keys.json",
    ledger: LedgerOption = None,
) -> None:
    """Revoke a key; a running gateway refuses it within a second."""
    from bastion.serve.auth import KeyFile

    check_ledger(ledger)
    store = KeyFile.load(keys)
    revoked = store.revoke(key_id)
    store.save()
    _record_key_event(ledger, revoked, "revoke")
    err_console.print(f"revoked key {key_id}")


def _record_key_event(ledger: str | None, key: ApiKey, action: str) -> None:
    """A key-event naming the key by id and by the hash the key file stores (never the key)."""
    if ledger is None:
        return
    from bastion.govern.events import Event, Subject, default_actor
    from bastion.govern.ledger import record

    subject = Subject(f"api-key {key.id}", f"sha256:{key.digest}")
    details = {"action": action, "name": key.name, "scopes": list(key.scopes)}
    record(ledger, [Event(kind="key-event", actor=default_actor(), subjects=(subject,),
                          details=details)])
