"""Objectives of the studies the web UI tests run (module-level: the trials' worker processes import them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import capstan


def rising(params: Mapping[str, Any]) -> float | None:
    """Reports ``x * (step + 1)`` for 5 steps and stops when told (a low ``x`` is pruned by the median rule); an
    ``x`` above 3.6 fails (a FAILED trial)."""
    x = float(params["x"])
    if x > 3.6:
        raise RuntimeError(f"diverged with x={x:.3f}")
    for step in range(5):
        capstan.report(x * (step + 1), step)
        if capstan.should_prune():
            return None
    return x * 5
