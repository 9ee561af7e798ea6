"""Request limits: body size (enforced while reading), JSON depth, and the model's declared
input schema (shape, dtype, finite values, value range).

Every refusal is a `Refused` with the HTTP status to answer and one line saying what is
wrong; nothing here raises anything else on hostile input.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import orjson


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    max_depth: int = 6
    max_batch: int = 256


@dataclass(frozen=True)
class InputSchema:
    """What the model accepts: per-row shape, and the range every value must fall in."""

    shape: tuple[int, ...]
    low: float | None = None
    high: float | None = None
    datatype: str = "FP64"

    def describe(self) -> dict[str, object]:
        return {"shape": [-1, *self.shape], "datatype": self.datatype,
                "range": [self.low, self.high]}


async def read_body(
    declared_length: str | None, chunks: AsyncIterator[bytes], limit: int
) -> bytes:
    """The request body, refusing (413) as soon as it exceeds `limit`: a declared
    Content-Length over the limit is refused before reading anything."""
    if declared_length is not None:
        try:
            if int(declared_length) > limit:
                raise Refused(413, f"request body over {limit} bytes")
        except ValueError:
            raise Refused(400, "malformed Content-Length") from None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"request body over {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _no_constants(name: str) -> float:
    raise Refused(422, f"non-finite number {name} in request")


def parse_json(body: bytes, max_depth: int) -> object:
    """Strict JSON (no NaN/Infinity), nesting at most `max_depth` containers deep.

    orjson parses well-formed bodies (the common case, several times faster); a body it
    refuses is parsed again by the standard library, so every refusal keeps its reason and
    status (NaN, Infinity and overflowing numbers are 422s, not 400s)."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        value = _parse_strictly(body, max_depth)
    _check_depth(value, max_depth)
    return value


def _parse_strictly(body: bytes, max_depth: int) -> object:
    try:
        return json.loads(body, parse_constant=_no_constants)
    except RecursionError:
        raise Refused(400, f"JSON nested deeper than {max_depth}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(400, f"malformed JSON: {exc}") from None


def _check_depth(value: object, max_depth: int) -> None:
    level = [value]
    depth = 0
    while level:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            return
        depth += 1
        if depth > max_depth:
            raise Refused(400, f"JSON nested deeper than {max_depth}")
        level = [
            item
            for c in containers
            for item in (c.values() if isinstance(c, dict) else c)
            if isinstance(item, (list, dict))
        ]


def to_batch(data: object, schema: InputSchema, limits: Limits, shape: object = None) -> np.ndarray:
    """Validated float64 batch of shape (n, *schema.shape) from JSON numbers.

    `shape` is the client's declared tensor shape (Open Inference Protocol), whose data may
    be flat; plain requests give nested rows, or one row.
    """
    if not isinstance(data, list):
        raise Refused(422, "inputs must be a list of numbers or rows")
    try:
        array = np.asarray(data)
    except ValueError:
        raise Refused(422, "inputs are ragged (rows of different lengths)") from None
    if array.dtype.kind not in "iuf" or (array.size == 0 and array.ndim < 2):
        raise Refused(422, "inputs must be non-empty numbers (no strings, booleans or nulls)")
    array = array.astype(np.float64, copy=False)
    if shape is not None:
        array = _reshape_declared(array, shape)
    elif array.shape == schema.shape:
        array = array[None, ...]
    if array.shape[1:] != schema.shape:
        raise Refused(422, f"input rows have shape {list(array.shape[1:])}, "
                           f"model expects {list(schema.shape)}")
    if not 0 < len(array) <= limits.max_batch:
        raise Refused(422, f"batch size {len(array)} outside 1..{limits.max_batch}")
    if not np.isfinite(array).all():
        raise Refused(422, "inputs contain NaN or infinite values")
    low, high = schema.low, schema.high
    if (low is not None and array.min() < low) or (high is not None and array.max() > high):
        raise Refused(422, f"input values outside the model's range [{low}, {high}]")
    return array


def _reshape_declared(array: np.ndarray, shape: object) -> np.ndarray:
    if not (isinstance(shape, list) and shape and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    )):
        raise Refused(422, "shape must be a list of positive integers")
    if math.prod(shape) != array.size:
        raise Refused(422, f"declared shape {shape} does not match {array.size} values")
    return array.reshape(shape)
