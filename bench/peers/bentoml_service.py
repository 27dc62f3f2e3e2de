"""The BentoML peer of bench/serving.py: a BentoML 1.4 service around the same estimator (a joblib file named by
``BENCH_MODEL_PATH``), with BentoML's defaults (one worker).

    BENCH_MODEL_PATH=model.joblib bentoml serve bentoml_service:RandomForest --working-dir bench/peers --port 3000
"""

from __future__ import annotations

import os

import bentoml
import joblib
import numpy as np


@bentoml.service
class RandomForest:
    """``POST /predict`` with ``{"rows": [[...], ...]}`` answers one prediction per row."""

    def __init__(self) -> None:
        self.model = joblib.load(os.environ["BENCH_MODEL_PATH"])

    @bentoml.api
    def predict(self, rows: np.ndarray) -> np.ndarray:
        """One prediction per row."""
        return np.asarray(self.model.predict(rows))
