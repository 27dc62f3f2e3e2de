"""Deployments pages benchmark: what one refresh of a deployment's page costs with many stored outcomes, against
``GET /api/v1/deployments/NAME`` (`DeploymentManager.status`) on the same data, and one page of a long list.

A temporary home gets one deployment (primary and canary, no replicas) with --outcomes request outcomes (a third of
them labelled), and --deployments more deployments in another project. Reported: the median of --repeats calls of
the page's read model (`capstan.ui.deployments_view.deployment_detail`, which reads the newest 10,000 outcomes),
of `status` (every kept outcome), and of one list page of 50.

    python bench/ui_deployments.py                      # 100,000 outcomes, 2,000 deployments
    python bench/ui_deployments.py --outcomes 20000 --repeats 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from capstan.services import Services
from capstan.serving.outcomes import Outcome
from capstan.serving.ports import DeploymentRecord
from capstan.serving.spec import parse_spec
from capstan.settings import Settings
from capstan.ui import deployments_view as dv

VERSIONS = (("primary", "models:/m/1"), ("canary", "models:/m/2"))


def _seed(services: Services, outcomes: int, deployments: int) -> None:
    now = services.clock()
    spec = parse_spec({"name": "big", "model": "models:/m/1", "canary": {"model": "models:/m/2", "traffic": 20}})
    services.deployments.put(DeploymentRecord("big", "default", spec, 1, VERSIONS, 2, now, now), expected_revision=0)
    rng = random.Random(7)
    rows = []
    for i in range(outcomes):
        canary = rng.random() < 0.2
        rows.append(Outcome(f"r{i}", "default", "big", "2" if canary else "1", "canary" if canary else "primary",
                            503 if rng.random() < 0.01 else 200, rng.random() * 10, now - outcomes + i,
                            predictions="[1]", truth="1" if i % 3 == 0 else None))
    for start in range(0, len(rows), 5000):
        services.outcomes.add(rows[start:start + 5000])
    for i in range(deployments):
        other = parse_spec({"name": f"d{i:05d}", "model": "models:/m/1"})
        services.deployments.put(DeploymentRecord(f"d{i:05d}", "many", other, 1, VERSIONS[:1], 1, now, now),
                                 expected_revision=0)


def _median(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--deployments", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        services = Services.open(Settings.for_home(Path(home)))
        try:
            _seed(services, args.outcomes, args.deployments)
            manager = services.deployment_manager()
            page = _median(lambda: dv.deployment_detail(manager, services.deployments, services.outcomes,
                                                        services.events, "default", "big", now_ms=services.clock()),
                           args.repeats)
            status = _median(lambda: manager.status("default", "big"), args.repeats)
            listing = _median(lambda: dv.deployment_list(services.deployments, "many"), args.repeats)
        finally:
            services.close()
    print(f"{args.outcomes} outcomes: deployment page read model {page * 1000:.0f} ms, "
          f"status route {status * 1000:.0f} ms ({status / page:.1f}x)")
    print(f"{args.deployments} deployments: one list page of {dv.DEFAULT_PAGE_SIZE} {listing * 1000:.0f} ms")


if __name__ == "__main__":
    main()
