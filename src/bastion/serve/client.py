"""A `Classifier` that queries a model through HTTP, the way a client of `bastion serve` (or
any Open Inference Protocol server) does; used by `bastion assess extraction --target URL`.
A refusal (blocked, rate-limited, budget spent) raises `QueryRefused` with how many rows
were answered before it."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import numpy as np

from bastion.errors import InputError


class QueryRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class RemoteClassifier:
    """The model at `url` (`http(s)://HOST/v2/models/NAME`), queried with an API key sent
    in a header."""

    def __init__(self, url: str, api_key: str | None, *, batch_size: int = 64,
                 timeout_s: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or "/v2/models/" not in parts.path:
            raise InputError(f"{url}: expected http(s)://HOST[:PORT]/v2/models/NAME")
        if parts.query:
            raise InputError(f"{url}: put the API key in BASTION_API_KEY, not in the URL")
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self.batch_size = batch_size
        self.answered = 0
        meta = self._get_json(self.url)
        try:
            first_input, first_output = meta["inputs"][0], meta["outputs"][0]
            self.input_shape = tuple(int(d) for d in first_input["shape"][1:])
            self.labels_only = first_output["name"] == "label"
            self.n_classes = (
                int(meta.get("parameters", {}).get("n_classes", 0)) if self.labels_only
                else int(first_output["shape"][-1])
            )
            low, high = (first_input.get("parameters") or {}).get("range", [None, None])
            self.clip_values = (float(low), float(high)) if low is not None else None
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputError(f"{url}: unexpected model metadata ({exc})") from None
        self.datatype = first_input.get("datatype", "FP32")

    def _get_json(self, url: str) -> dict:
        try:
            response = self._client.get(url)
        except httpx.HTTPError as exc:
            raise InputError(f"{url}: {exc}") from None
        if response.status_code != 200:
            raise InputError(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        return response.json()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        body = {"inputs": [{"name": "input-0", "shape": list(batch.shape),
                            "datatype": self.datatype, "data": batch.reshape(-1).tolist()}]}
        try:
            response = self._client.post(self.url + "/infer", json=body)
        except httpx.HTTPError as exc:
            raise InputError(f"{self.url}: {exc}") from None
        if response.status_code in (403, 429):
            raise QueryRefused(response.status_code, response.json().get("error", ""))
        if response.status_code != 200:
            raise InputError(f"{self.url}: HTTP {response.status_code} {response.text[:200]}")
        output = response.json()["outputs"][0]
        data = np.asarray(output["data"])
        if self.labels_only:
            width = max(self.n_classes, int(data.max()) + 1)
            return np.eye(width)[data.astype(np.int64)]
        return data.astype(np.float64).reshape(len(batch), -1)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        parts = []
        for start in range(0, len(x), self.batch_size):
            batch = x[start : start + self.batch_size]
            parts.append(self._infer(batch))
            self.answered += len(batch)
        return np.concatenate(parts) if parts else np.zeros((0, self.n_classes))

    def close(self) -> None:
        self._client.close()
