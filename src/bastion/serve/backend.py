"""What the gateway guards: a local model (loaded safely) or an upstream model server that
speaks the Open Inference Protocol. Either way the gateway sees probabilities."""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from bastion.errors import InputError, UsageError
from bastion.models.classifier import Classifier
from bastion.serve.limits import InputSchema


class BackendError(Exception):
    """The model or the upstream server failed on a valid request."""


class Backend(Protocol):
    name: str
    platform: str
    schema: InputSchema
    n_classes: int

    async def predict(self, batch: np.ndarray) -> np.ndarray: ...

    async def close(self) -> None: ...


INLINE_S = 0.001  # predictions expected to take less run on the event loop itself


class LocalBackend:
    """A classifier in this process.

    A prediction expected to take longer than `inline_s` runs in the thread pool, so a slow
    model or a large batch never stalls the event loop (health checks, refusals). A faster
    one runs on the event loop: handing a sub-millisecond prediction to a thread costs more
    than the prediction (two thread wake-ups, and the event loop then competes with the
    pool's threads for the GIL on every numpy call of the request). The expectation is a
    fixed cost plus a cost per row, timed once at start on a probe batch inside the declared
    input range; a model that fails on the probe always runs in the pool."""

    platform = "bastion-local"

    def __init__(self, name: str, classifier: Classifier, schema: InputSchema,
                 inline_s: float = INLINE_S) -> None:
        self.name = name
        self.classifier = classifier
        self.schema = schema
        self.n_classes = int(classifier.n_classes)
        self.inline_rows = _rows_within(classifier, schema, inline_s) if inline_s > 0 else 0

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        try:
            if len(batch) <= self.inline_rows:
                return self.classifier.predict_proba(batch)
            return await run_in_threadpool(self.classifier.predict_proba, batch)
        except Exception as exc:  # the model's own failure, reported as a 502
            raise BackendError(f"model failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        return None


def _rows_within(classifier: Classifier, schema: InputSchema, seconds: float) -> int:
    """The largest batch the model is expected to answer within `seconds` (0: none), from
    the best of a few timings of a 1-row probe and, only if that is fast enough, a 32-row
    one (a slow model costs a few single-row predictions at start, no more)."""
    low = schema.low if schema.low is not None else 0.0
    high = schema.high if schema.high is not None else low
    row = np.full((1, *schema.shape), (low + high) / 2, dtype=np.float64)

    def best_time(batch: np.ndarray) -> float:
        times = []
        for _ in range(5):
            started = time.perf_counter()
            classifier.predict_proba(batch)
            times.append(time.perf_counter() - started)
        return min(times)

    try:
        classifier.predict_proba(row)  # first call: lazy initialisation, not timed
        one = best_time(row)
        if one > seconds:
            return 0
        many = best_time(np.repeat(row, 32, axis=0))
    except Exception:  # whatever the model raises on the probe, it is not run inline
        return 0
    per_row = max(many - one, 0.0) / 31
    fixed = max(one - per_row, 0.0)
    return 32 if per_row == 0 else max(1, min(32, int((seconds - fixed) / per_row)))


def local_schema(
    classifier: Classifier, shape: tuple[int, ...] | None, value_range: tuple[float, float] | None
) -> InputSchema:
    """The input schema from the model's declared shape and clip values, or the options."""
    shape = shape or classifier.input_shape
    if shape is None:
        raise UsageError("the model does not declare its input shape; give --input-shape")
    bounds = value_range or classifier.clip_values or (None, None)
    return InputSchema(tuple(int(d) for d in shape), bounds[0], bounds[1])


class UpstreamBackend:
    """An existing model server (KServe, Triton, MLServer, ...) reached over the Open
    Inference Protocol; its first output is read as class probabilities."""

    platform = "bastion-proxy"

    def __init__(self, client: Any, name: str, input_name: str, schema: InputSchema,
                 n_classes: int) -> None:
        self._client = client
        self.name = name
        self.input_name = input_name
        self.schema = schema
        self.n_classes = n_classes

    @classmethod
    def connect(
        cls, url: str, model: str, value_range: tuple[float, float] | None, timeout_s: float
    ) -> UpstreamBackend:
        """Read the upstream model's metadata now (so a wrong URL fails at start)."""
        import httpx

        base = url.rstrip("/")
        try:
            response = httpx.get(f"{base}/v2/models/{model}", timeout=timeout_s)
            response.raise_for_status()
            meta = response.json()
            first_input, first_output = meta["inputs"][0], meta["outputs"][0]
            shape = tuple(int(d) for d in first_input["shape"][1:])
            n_classes = int(first_output["shape"][-1])
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise InputError(
                f"upstream {url}: cannot read Open Inference Protocol metadata for model "
                f"{model!r} ({exc})"
            ) from None
        if any(d < 1 for d in shape) or n_classes < 2:
            raise InputError(f"upstream {url}: model {model!r} declares dynamic or odd shapes")
        bounds = value_range or (None, None)
        schema = InputSchema(shape, bounds[0], bounds[1], first_input.get("datatype", "FP32"))
        client = httpx.AsyncClient(base_url=base, timeout=timeout_s)
        return cls(client, model, first_input["name"], schema, n_classes)

    async def predict(self, batch: np.ndarray) -> np.ndarray:
        import httpx

        body = {"inputs": [{"name": self.input_name, "shape": list(batch.shape),
                            "datatype": self.schema.datatype,
                            "data": batch.reshape(-1).tolist()}]}
        try:
            response = await self._client.post(f"/v2/models/{self.name}/infer", json=body)
            response.raise_for_status()
            output = response.json()["outputs"][0]
            return np.asarray(output["data"], dtype=np.float64).reshape(len(batch), -1)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"upstream failed: {type(exc).__name__}") from exc

    async def close(self) -> None:
        await self._client.aclose()
