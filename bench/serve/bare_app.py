"""The baseline for bench/serve: the same model behind a bare FastAPI endpoint, as a team
would write it without a gateway (no keys, no limits, no monitor)."""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI

model = joblib.load(os.environ["BENCH_MODEL"])  # the bench's own file, written just before
app = FastAPI()


@app.post("/predict")
def predict(body: dict) -> dict:
    rows = np.asarray(body["inputs"], dtype=np.float64)
    probabilities = model.predict_proba(rows)
    return {"predictions": probabilities.argmax(axis=1).tolist(),
            "probabilities": probabilities.tolist()}
