"""Fixtures of the troubleshooting tests: one pipeline run whose steps fail in every way a step can (run once for
the package), and a home whose workload queue writes its decisions to the event log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from troubleshoot_helpers import SCRIPTS, FailedRun

from capstan.settings import Settings


@pytest.fixture(scope="package")
def failed_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailedRun]:
    """Run ``failing_flow.py:failing`` once, through the workload queue of a fresh home (steps in worker processes,
    the memory request enforced, every decision in the event log)."""
    from capstan.pipelines.executors import close_pools
    from capstan.pipelines.loader import load_pipeline
    from capstan.services import Services

    settings = Settings.for_home(tmp_path_factory.mktemp("failed-run") / "home")
    services = Services.open(settings)
    try:
        pipe, ref = load_pipeline(f"{SCRIPTS / 'failing_flow.py'}:failing")
        result = services.pipelines.get().run(pipe, {}, ref=ref)
        assert result.status == "failed"
        yield FailedRun(settings, result.run_id)
    finally:
        services.close()
        close_pools()

