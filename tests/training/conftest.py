"""Fixtures of the training job tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from training_helpers import GIB, Env, make_env

from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A machine of 8 CPUs, 16 GiB and 2 GPUs, in memory."""
    machine = Capacity(cpu=8, memory=16 * GIB, gpus=(("0", "test-gpu"), ("1", "test-gpu")))
    yield from make_env(tmp_path, LocalAdmission(machine))
