"""A remote JSON prediction endpoint as a black-box `Classifier`, with a query budget.

Protocol: POST `{"inputs": [[...], ...]}` to the URL; the reply is `{"probabilities":
[[...], ...]}` (key names configurable). Every row sent counts as one query; a request that
would exceed the budget is refused before it is sent, with an error saying so.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping

import numpy as np

from bastion.errors import InputError, RefusedError, UsageError
from bastion.models.classifier import ClipValues


class QueryBudgetExhausted(RefusedError):
    """The assessment asked for more queries than the endpoint's budget allows."""


class HttpClassifier:
    """Class probabilities from a remote endpoint; counts `queries` (rows sent)."""

    def __init__(
        self,
        url: str,
        *,
        input_shape: tuple[int, ...] | None = None,
        n_classes: int | None = None,
        clip_values: ClipValues | None = None,
        budget: int | None = None,
        batch_size: int = 256,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        input_key: str = "inputs",
        output_key: str = "probabilities",
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"model URL must start with http:// or https://, got {url!r}")
        if budget is not None and budget < 1:
            raise UsageError(f"query budget must be at least 1, got {budget}")
        self.url = url
        self.input_shape = tuple(input_shape) if input_shape else None
        self.clip_values = clip_values
        self.budget = budget
        self.batch_size = batch_size
        self.timeout = timeout
        self.headers = {"Content-Type": "application/json", **dict(headers or {})}
        self.input_key, self.output_key = input_key, output_key
        self.queries = 0
        if n_classes is None:
            if self.input_shape is None:
                raise UsageError("give n_classes or input_shape for a remote model")
            n_classes = self.predict_proba(np.zeros((1, *self.input_shape))).shape[1]
        self.n_classes = int(n_classes)

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.queries

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.budget is not None and self.queries + len(x) > self.budget:
            raise QueryBudgetExhausted(
                f"query budget of {self.budget} for {self.url} exhausted: {self.queries} "
                f"rows sent, {len(x)} more requested; raise the limit (--query-limit) or assess "
                "fewer points (--points)"
            )
        parts = [self._post(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, getattr(self, "n_classes", 0)))

    def _post(self, rows: np.ndarray) -> np.ndarray:
        body = json.dumps({self.input_key: rows.tolist()}).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        self.queries += len(rows)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise InputError(f"{self.url} answered HTTP {exc.code} ({exc.reason})") from None
        except urllib.error.URLError as exc:
            raise InputError(f"cannot reach {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError) as exc:
            raise InputError(f"cannot reach {self.url}: {exc}") from None
        except json.JSONDecodeError:
            raise InputError(f"{self.url} did not answer with JSON") from None
        return self._scores(reply, len(rows))

    def _scores(self, reply: object, rows: int) -> np.ndarray:
        if not isinstance(reply, dict) or self.output_key not in reply:
            raise InputError(f"{self.url}: the reply has no {self.output_key!r} field")
        try:
            scores = np.asarray(reply[self.output_key], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(
                f"{self.url}: {self.output_key!r} is not a matrix of numbers"
            ) from None
        if scores.ndim != 2 or len(scores) != rows:
            raise InputError(
                f"{self.url}: expected {rows} rows of class probabilities, got shape {scores.shape}"
            )
        return scores
