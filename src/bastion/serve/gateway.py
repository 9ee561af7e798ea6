"""Assemble a gateway from command-line choices: the backend (a model file loaded safely,
or an upstream server), the key ring, the store and the policies."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from bastion.errors import UsageError
from bastion.serve.app import GatewayConfig, create_app
from bastion.serve.auth import KeyRing
from bastion.serve.backend import Backend, LocalBackend, UpstreamBackend, local_schema
from bastion.serve.harden import parse_policy
from bastion.serve.limits import Limits
from bastion.serve.monitor import ACTIONS, MonitorConfig
from bastion.serve.store import open_store


def load_backend(
    model: str | None, upstream: str | None, upstream_model: str | None, name: str | None,
    input_shape: tuple[int, ...] | None, input_range: tuple[float, float] | None,
    verify_key: str | None,
) -> Backend:
    if upstream is not None:
        if not upstream_model:
            raise UsageError("--upstream needs --upstream-model NAME")
        backend = UpstreamBackend.connect(upstream, upstream_model, input_range, timeout_s=10.0)
        if name:
            raise UsageError("--name renames local models only; the upstream name is kept")
        return backend
    from bastion.models import load
    from bastion.models.classifier import as_classifier

    loaded = load(model, verify_key=verify_key)
    if type(loaded).__name__ == "ModelProto":  # ONNX
        from bastion.models.onnx_classifier import OnnxClassifier

        classifier = OnnxClassifier(loaded, input_shape=input_shape)
    else:
        classifier = as_classifier(loaded)
    return LocalBackend(name or Path(model).stem, classifier,
                        local_schema(classifier, input_shape, input_range))


def build_app(
    *, model: str | None, upstream: str | None, upstream_model: str | None, name: str | None,
    keys: str, store: str, policies: list[str], monitor: str,
    input_shape: tuple[int, ...] | None, input_range: tuple[float, float] | None,
    max_body: int, max_batch: int, client_rate: float, client_burst: int,
    cors_origins: list[str], audit: str | None, ledger: str | None, verify_key: str | None,
) -> FastAPI:
    if monitor != "off" and monitor not in ACTIONS:
        raise UsageError(f"--monitor {monitor!r}: expected log, throttle, block or off")
    if max_body < 1 or max_batch < 1 or client_rate <= 0 or client_burst < 1:
        raise UsageError("--max-body, --max-batch, --client-rate, --client-burst must be positive")
    ring = KeyRing(keys)
    if ledger is not None:
        from bastion.govern.ledger import Ledger

        Ledger.open(ledger).close()  # fail now, not at the first flush
    config = GatewayConfig(
        limits=Limits(max_body_bytes=max_body, max_batch=max_batch),
        policies=tuple(parse_policy(p) for p in policies),
        monitor=None if monitor == "off" else MonitorConfig(action=monitor),
        client_rate=client_rate, client_burst=client_burst,
        cors_origins=tuple(cors_origins), audit_path=audit, ledger=ledger,
    )
    backend = load_backend(model, upstream, upstream_model, name, input_shape, input_range,
                           verify_key)
    if ledger is not None:
        record_deploy(ledger, model or upstream, backend, config)
    return create_app(backend, ring, open_store(store), config)


def record_deploy(ledger: str, source: str, backend: Backend, config: GatewayConfig) -> None:
    """A `deploy` event: the model file's digest as parent (lineage from its scan and
    signature), and the gateway's settings."""
    from bastion.govern.events import Event, default_actor, file_digest
    from bastion.govern.ledger import record

    parents = (file_digest(source),) if Path(source).is_file() else ()
    details = {
        "gateway": "bastion serve", "model": backend.name, "source": source,
        "input_shape": list(backend.schema.shape),
        "output_policies": [str(p) for p in config.policies],
        "monitor": config.monitor.action if config.monitor else "off",
    }
    record(ledger, [Event(kind="deploy", actor=default_actor(), parents=parents,
                          details=details)])
