"""Pipeline runners for tests, taken from the composition root as the CLI and the server take theirs."""

from __future__ import annotations

from capstan.pipelines.runner import PipelineRunner
from capstan.resources.admission import Admission
from capstan.services import Services
from capstan.settings import Settings


def open_runner(settings: Settings, *, admission: Admission | None = None) -> PipelineRunner:
    """The pipeline runner of `Services.open(settings)` (the workload queue admits steps unless ``admission``
    is given); ``runner.close()`` releases the bundle's connections."""
    return Services.open(settings, admission=admission).pipelines.get()


SQUARE_STEPS = '''
import capstan.pipelines as cp

@cp.step
def make(n: int) -> list[int]:
    print(f"making {n}")
    return list(range(n))

@cp.step
def square(chunk: cp.Chunk, xs: list[int]) -> list[int]:
    print(f"chunk {chunk.index} of {chunk.count}")
    return [xs[i] * xs[i] for i in chunk.slice(len(xs))]

@cp.step
def total(parts: list[list[int]]) -> int:
    return sum(sum(p) for p in parts)
'''
"""The steps of a map over chunks (make, square, total) that pipeline files written by tests start with; each
test adds its own ``@cp.pipeline`` (and further steps)."""
