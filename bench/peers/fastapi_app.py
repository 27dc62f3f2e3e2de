"""The "minimal FastAPI app" peer of bench/serving.py: a pydantic body, a sync handler, ``model.predict``.

Written the way a team would write its first serving endpoint, with no tuning: FastAPI on uvicorn's defaults, one
worker. The estimator is a joblib file named by ``BENCH_MODEL_PATH``.

    BENCH_MODEL_PATH=model.joblib uvicorn fastapi_app:app --app-dir bench/peers --port 8000
"""

from __future__ import annotations

import os

import joblib
import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

model = joblib.load(os.environ["BENCH_MODEL_PATH"])
app = FastAPI()


class Rows(BaseModel):
    """The request: rows of features."""

    inputs: list[list[float]]


@app.get("/health")
def health() -> dict[str, str]:
    """Ready once the module (and so the model) is loaded."""
    return {"status": "ok"}


@app.post("/predict")
def predict(rows: Rows) -> dict[str, list[float]]:
    """One prediction per row."""
    return {"predictions": model.predict(np.asarray(rows.inputs)).tolist()}
