"""Fixtures of the pipelines tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capstan.pipelines.runner import PipelineRunner
from capstan.settings import Settings
from helpers.pipelines import open_runner


@pytest.fixture
def runner(settings: Settings) -> Iterator[PipelineRunner]:
    """A runner over fresh local stores; its worker pool is stopped afterwards."""
    from capstan.pipelines.executors import close_pools

    opened = open_runner(settings)
    try:
        yield opened
    finally:
        opened.close()
        close_pools()
