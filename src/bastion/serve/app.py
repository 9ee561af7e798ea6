"""The gateway's HTTP surface: Open Inference Protocol V2 (`/v2/models/{name}`,
`/v2/models/{name}/infer`), a plain `POST /predict`, `/healthz` and `/metrics`.

Each model request runs the same guard: the API key (header only, checked locally), then
one atomic store call for the per-address rate limit, the key's monitor flag, its rate limit
and its daily budget (a request refused by the address limit is answered 429 even with a bad
key, so guessing keys is rate-limited too); then the body size while reading, JSON depth and
the input schema; then the model, the output policy and the extraction monitor.

There is no management or model-loading endpoint: what is served is fixed when the process
starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from bastion.serve import harden
from bastion.serve.audit import AuditLog
from bastion.serve.auth import ApiKey, AuthError, KeyRing
from bastion.serve.backend import Backend, BackendError
from bastion.serve.limits import Limits, Refused, parse_json, read_body, to_batch
from bastion.serve.monitor import Monitor, MonitorConfig
from bastion.serve.store import Quota, Store

# Query parameters that would put a credential in URLs, logs and browser history.
_KEY_PARAMS = {"api_key", "apikey", "key", "token", "access_token", "x-api-key"}
DAY_S = 24 * 3600


@dataclass
class GatewayConfig:
    limits: Limits = field(default_factory=Limits)
    policies: tuple[harden.Policy, ...] = ()
    monitor: MonitorConfig | None = field(default_factory=MonitorConfig)
    client_rate: float = 50.0  # per client address, requests/s
    client_burst: int = 100
    throttle_factor: float = 0.1  # a throttled key keeps this share of its rate and burst
    cors_origins: tuple[str, ...] = ()
    audit_path: str | None = None
    ledger: str | None = None
    ledger_interval_s: float = 60.0


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "bastion_requests", "Gateway decisions by route", ["route", "decision"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bastion_request_seconds", "Time to answer an allowed model request", ["route"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "bastion_monitor_alerts", "Extraction monitor verdicts that raised an alert",
            registry=self.registry,
        )
        self.rows = Counter("bastion_rows", "Input rows answered", registry=self.registry)


def _request_schema(batch_inputs: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": batch_inputs}}}}


_NUMBER_ROWS = {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
PLAIN_REQUEST = {
    "type": "object", "required": ["inputs"], "additionalProperties": False,
    "properties": {"inputs": _NUMBER_ROWS},
}
V2_REQUEST = {
    "type": "object", "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"type": "string"},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                "datatype": {"type": "string", "enum": ["FP32", "FP64", "INT32", "INT64"]},
                "data": {"type": "array", "items": {"type": "number"}},
            }}},
        "outputs": {"type": "array"},
    },
}
_ERROR = {"content": {"application/json": {"schema": {
    "type": "object", "properties": {"error": {"type": "string"}}}}}}
_ERRORS = {str(code): {"description": text, **_ERROR} for code, text in [
    (400, "Malformed or too deeply nested JSON"), (401, "Missing or invalid API key"),
    (403, "Key revoked, out of scope, or blocked by the extraction monitor"),
    (404, "Unknown model"), (413, "Body too large"), (422, "Input outside the schema"),
    (429, "Rate limit or daily budget exceeded"), (502, "The model failed"),
]}


def _client(request: Request) -> str:
    address = request.scope.get("client")
    return address[0] if address else "unknown"


class _OrjsonResponse(JSONResponse):
    """A JSON answer serialised by orjson (several times faster than the standard library
    on arrays of floats); numpy values are accepted as they are."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        return value.strip() if scheme.lower() == "bearer" else None
    return request.headers.get("x-api-key")


def create_app(backend: Backend, keys: KeyRing, store: Store, config: GatewayConfig) -> FastAPI:
    metrics = _Metrics()
    audit = AuditLog(config.audit_path, config.ledger, backend.name)
    monitor = Monitor(config.monitor, backend.schema, store) if config.monitor else None
    label_only = harden.labels_only(config.policies)
    # the allowed-request counter and latency histogram of each model route, looked up once
    route_metrics = {route: (metrics.requests.labels(route, "allowed"),
                             metrics.latency.labels(route)) for route in ("predict", "v2-infer")}

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        import anyio

        async def flush_periodically() -> None:
            while True:
                await anyio.sleep(config.ledger_interval_s)
                await anyio.to_thread.run_sync(audit.flush_to_ledger)

        async with anyio.create_task_group() as tasks:
            if config.ledger:
                tasks.start_soon(flush_periodically)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
                await anyio.to_thread.run_sync(audit.close)
                await backend.close()
                await store.close()

    app = FastAPI(
        title="Bastion gateway", version="1", lifespan=lifespan,
        docs_url=None, redoc_url=None,
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type"])

    def answer(route: str, decision: str, status: int, reason: str, **fields: Any) -> JSONResponse:
        metrics.requests.labels(route, decision).inc()
        audit.write(decision, route=route, status=status, reason=reason, **fields)
        headers = {"Retry-After": str(fields["retry_after"])} if "retry_after" in fields else None
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    async def authorise(request: Request, route: str, scope: str) -> ApiKey | JSONResponse:
        """The request's key, once admitted; otherwise the refusal to send. The key check
        is local; the limits are one store call (one round trip with Redis)."""
        client = _client(request)
        if request.scope["query_string"] and _KEY_PARAMS & {
            name.lower() for name in request.query_params
        }:
            return answer(route, "refused", 400, "API keys are accepted only in a header, "
                          "never in the URL", client=client)
        try:
            key: ApiKey | None = keys.authenticate(_token(request), scope)
            failure = None
        except AuthError as exc:
            key, failure = None, exc
        quota = None if key is None else Quota(
            key.id, key.rate, key.burst, key.daily_budget if scope == "infer" else None,
            str(int(time.time() // DAY_S)), DAY_S + 3600,
        )
        admission = await store.admit(client, config.client_rate, config.client_burst, quota,
                                      config.throttle_factor)
        if admission.refused == "address":
            return answer(route, "limited", 429, "too many requests from this address",
                          client=client, retry_after=_seconds(admission.wait))
        if failure is not None:
            return answer(route, "refused", failure.status, failure.reason, client=client)
        if admission.refused == "blocked":
            return answer(route, "blocked", 403, "API key blocked by the extraction monitor",
                          client=client, key=key.id)
        if admission.refused == "key":
            return answer(route, "limited", 429, "rate limit exceeded for this key",
                          client=client, key=key.id, retry_after=_seconds(admission.wait))
        if admission.refused == "budget":
            return answer(route, "limited", 429, "daily query budget spent for this key",
                          client=client, key=key.id,
                          retry_after=_seconds(DAY_S - time.time() % DAY_S))
        return key

    async def guarded_inference(
        request: Request, route: str, extract: Callable[[Any], np.ndarray],
        respond: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
    ) -> Response:
        started = time.perf_counter()
        key = await authorise(request, route, "infer")
        if isinstance(key, Response):
            return key
        client = _client(request)
        try:
            body = await read_body(request.headers.get("content-length"), request.stream(),
                                   config.limits.max_body_bytes)
            batch = extract(parse_json(body, config.limits.max_depth))
        except Refused as exc:
            return answer(route, "refused", exc.status, exc.reason, client=client, key=key.id)
        try:
            probabilities = await backend.predict(batch)
        except BackendError as exc:
            return answer(route, "error", 502, str(exc), client=client, key=key.id)
        if not np.isfinite(probabilities).all():
            return answer(route, "error", 502, "the model answered with non-finite "
                          "probabilities", client=client, key=key.id)
        if monitor is not None:
            verdict = await monitor.observe(key.id, batch, probabilities)
            if verdict.alert:
                await _on_alert(key, client, route, verdict)
        hardened = harden.apply(config.policies, probabilities)
        labels = probabilities.argmax(axis=1)  # the model's answer, whatever the policy
        allowed, latency = route_metrics[route]
        allowed.inc()
        metrics.rows.inc(len(batch))
        audit.write("allowed", route=route, status=200, client=client, key=key.id, rows=len(batch))
        latency.observe(time.perf_counter() - started)
        return _OrjsonResponse(respond(labels, hardened))

    async def _on_alert(key: ApiKey, client: str, route: str, verdict: Any) -> None:
        action = config.monitor.action
        if action != "log" and await store.flag(key.id) != "blocked":
            await store.flag(key.id, "blocked" if action == "block" else "throttled")
        metrics.alerts.inc()
        audit.write("alert", route=route, client=client, key=key.id, action=action,
                    **verdict.evidence())

    def plain_extract(document: Any) -> np.ndarray:
        if not isinstance(document, dict) or set(document) != {"inputs"}:
            raise Refused(422, 'expected {"inputs": [[...], ...]}')
        return to_batch(document["inputs"], backend.schema, config.limits)

    def plain_respond(labels: np.ndarray, hardened: np.ndarray) -> dict[str, Any]:
        if label_only:
            return {"predictions": labels.tolist()}
        return {"predictions": labels.tolist(), "probabilities": hardened.tolist()}

    def v2_extract(name: str, document: Any) -> np.ndarray:
        if name != backend.name:
            raise Refused(404, f"no model named {name!r}")
        if not isinstance(document, dict) or not isinstance(document.get("inputs"), list) \
                or len(document["inputs"]) != 1 or not isinstance(document["inputs"][0], dict):
            raise Refused(422, "expected one tensor in inputs")
        tensor = document["inputs"][0]
        if tensor.get("datatype") not in ("FP32", "FP64", "INT32", "INT64"):
            raise Refused(422, "datatype must be FP32, FP64, INT32 or INT64")
        return to_batch(tensor.get("data"), backend.schema, config.limits, tensor.get("shape"))

    def v2_respond(labels: np.ndarray, hardened: np.ndarray) -> dict[str, Any]:
        if label_only:
            output = {"name": "label", "shape": [len(labels)], "datatype": "INT64",
                      "data": labels.tolist()}
        else:
            output = {"name": "probabilities", "shape": list(hardened.shape),
                      "datatype": "FP64", "data": hardened.reshape(-1).tolist()}
        return {"model_name": backend.name, "outputs": [output]}

    @app.get("/healthz", summary="Liveness (no key needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", summary="Prometheus metrics (scope: metrics)", responses=_ERRORS)
    async def prometheus(request: Request) -> Response:
        key = await authorise(request, "metrics", "metrics")
        if isinstance(key, Response):
            return key
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v2/models/{name}", summary="Open Inference Protocol model metadata",
             responses=_ERRORS)
    async def v2_metadata(name: str, request: Request) -> Response:
        key = await authorise(request, "metadata", "metadata")
        if isinstance(key, Response):
            return key
        if name != backend.name:
            return answer("metadata", "refused", 404, f"no model named {name!r}", key=key.id)
        schema = backend.schema
        output = ({"name": "label", "datatype": "INT64", "shape": [-1]} if label_only else
                  {"name": "probabilities", "datatype": "FP64", "shape": [-1, backend.n_classes]})
        return JSONResponse({
            "name": backend.name, "versions": [], "platform": backend.platform,
            "parameters": {"n_classes": backend.n_classes},
            "inputs": [{"name": "input-0", "datatype": schema.datatype,
                        "shape": [-1, *schema.shape],
                        "parameters": {"range": [schema.low, schema.high]}}],
            "outputs": [output],
        })

    @app.post("/v2/models/{name}/infer", summary="Open Inference Protocol inference",
              openapi_extra=_request_schema(V2_REQUEST), responses=_ERRORS)
    async def v2_infer(name: str, request: Request) -> Response:
        return await guarded_inference(
            request, "v2-infer", lambda document: v2_extract(name, document), v2_respond
        )

    @app.post("/predict", summary="Plain JSON inference: {\"inputs\": [[...], ...]}",
              openapi_extra=_request_schema(PLAIN_REQUEST), responses=_ERRORS)
    async def predict(request: Request) -> Response:
        return await guarded_inference(request, "predict", plain_extract, plain_respond)

    return app


def _seconds(wait: float) -> int:
    return max(1, int(min(wait, DAY_S) + 0.999))
