"""The deployments pages' read model on real stores (SQLite under a temporary home), without a browser or replicas:
request rates per version, the list's pages, desired replicas per role, and a deployment's figures from a bounded
sample of its newest outcomes (equal to ``deployments status`` while the sample holds them all)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.services import Services
from capstan.serving.controller import EVENT_KIND, object_id
from capstan.serving.outcomes import Outcome
from capstan.serving.ports import DeploymentRecord, ReplicaRecord, ReplicaState, Role
from capstan.serving.spec import parse_spec
from capstan.settings import Settings
from capstan.ui import deployments_view as dv

NOW = 1_800_000_000_000
V1, V2, V3 = "models:/iris/1", "models:/iris/2", "models:/iris/3"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    svc = Services.open(Settings.for_home(tmp_path / "home"))
    try:
        yield svc
    finally:
        svc.close()


def _record(name: str, *, desired: int = 4, canary: float | None = 25.0, shadow: float | None = None,
            project: str = "default") -> DeploymentRecord:
    document: dict[str, object] = {"name": name, "model": V1, "replicas": desired}
    versions: list[tuple[Role, str]] = [("primary", V1)]
    if canary is not None:
        document["canary"] = {"model": V2, "traffic": canary}
        versions.append(("canary", V2))
    if shadow is not None:
        document["shadow"] = {"model": V3, "traffic": shadow}
        versions.append(("shadow", V3))
    return DeploymentRecord(name, project, parse_spec(document), 1, tuple(versions), desired, NOW - 60_000,
                            NOW - 60_000)


def _replica(name: str, index: int, version: str, state: ReplicaState = "ready") -> ReplicaRecord:
    return ReplicaRecord(f"{name}-{index}", name, "default", "primary", version, state,
                         f"http://127.0.0.1:{40000 + index}" if state == "ready" else None, None, 0, NOW, NOW)


def _outcome(version: str, at_ms: int, *, status: int = 200, role: str = "primary", latency: float = 5.0,
             n: int = 0) -> Outcome:
    return Outcome(f"r{version}-{at_ms}-{n}", "default", "flow", version, role, status, latency, at_ms)


def test_rates_are_requests_per_second_over_the_window_by_version_and_shadow() -> None:
    outcomes = ([_outcome("1", NOW - 1000 * i) for i in range(12)]        # 11 within the last 10 s
                + [_outcome("2", NOW - 500, role="canary"), _outcome("2", NOW - 20_000, role="canary")]
                + [_outcome("3", NOW - 100, role="shadow", n=k) for k in range(3)])
    rates, span = dv.version_rates(outcomes, now_ms=NOW)
    assert span == 10_000
    assert rates == {("1", False): 1.1, ("2", False): 0.1, ("3", True): 0.3}
    assert dv.version_rates([], now_ms=NOW) == ({}, 10_000)


def test_a_full_sample_younger_than_the_window_averages_over_what_it_covers() -> None:
    outcomes = [_outcome("1", NOW - 2000 + i) for i in range(100)]  # 100 requests within the last 2 s
    rates, span = dv.version_rates(outcomes, now_ms=NOW, limit=100)
    assert span == 2000 and rates == {("1", False): 50.0}
    rates, span = dv.version_rates(outcomes, now_ms=NOW, limit=1000)  # not full: the sample is all there was
    assert span == 10_000 and rates == {("1", False): 10.0}


def test_desired_replicas_per_role_follow_the_controller(services: Services) -> None:
    record = _record("flow", desired=4, canary=25.0, shadow=10.0)
    replicas = [_replica("flow", 1, V1), _replica("flow", 2, V1, "starting"), _replica("flow", 3, V2)]
    shares = dv.route_shares(record, replicas)
    assert [(s.role, s.version, s.weight, s.ready, s.desired) for s in shares] == [
        ("primary", "1", 75.0, 1, 4), ("canary", "2", 25.0, 1, 1), ("shadow", "3", 10.0, 0, 1)]


def test_the_list_pages_by_name_with_one_replicas_query(services: Services) -> None:
    store = services.deployments
    for name in ("echo", "alpha", "delta", "bravo", "charlie"):
        store.put(_record(name, canary=None), expected_revision=0)
    store.put(_record("other", project="beta"), expected_revision=0)
    store.put_replica(_replica("bravo", 1, V1))
    first = dv.deployment_list(store, "default", max_results=2)
    assert [r.name for r in first.rows] == ["alpha", "bravo"] and first.next_page_token
    assert [(r.state, r.ready, r.desired) for r in first.rows] == [("starting", 0, 4), ("ready", 1, 4)]
    second = dv.deployment_list(store, "default", max_results=2, page_token=first.next_page_token)
    third = dv.deployment_list(store, "default", max_results=2, page_token=second.next_page_token)
    assert [r.name for r in second.rows] == ["charlie", "delta"]
    assert [r.name for r in third.rows] == ["echo"] and third.next_page_token is None
    listed = dv.deployment_list_json(first)
    assert listed["deployments"][1]["traffic"] == [{"role": "primary", "model_version": V1, "version": "1",
                                                   "weight": 100.0, "ready_replicas": 1, "desired_replicas": 4}]
    with pytest.raises(InvalidParameterValue, match="page_token"):
        dv.deployment_list(store, "default", page_token="%%%")
    for bad in ("0", "501", "many"):
        with pytest.raises(InvalidParameterValue, match="max_results"):
            dv.check_page_size(bad)
    assert dv.check_page_size(None) == dv.DEFAULT_PAGE_SIZE


def test_the_detail_reads_a_bounded_sample_and_agrees_with_status(services: Services,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    manager = services.deployment_manager()
    services.deployments.put(_record("flow", desired=1, canary=30.0), expected_revision=0)
    services.deployments.put_replica(_replica("flow", 1, V1))
    key = object_id("default", "flow")
    services.events.append(EVENT_KIND, key, "ColdStart", "waited", project="default", data={"seconds": 2.5})
    services.events.append(EVENT_KIND, key, "Scaled", "1 replica", project="default")
    outcomes = ([_outcome("1", NOW - 30_000 + i * 100, latency=float(i), n=i) for i in range(20)]
                + [_outcome("1", NOW - 1000, status=503, n=99)]
                + [_outcome("2", NOW - 900 + i, role="canary", n=i) for i in range(4)]
                + [_outcome("7", NOW - 40_000, n=i) for i in range(2)])  # a version no longer served
    services.outcomes.add(sorted(outcomes, key=lambda o: o.time_ms))

    def detail() -> dv.DeploymentDetail:
        return dv.deployment_detail(manager, services.deployments, services.outcomes, services.events, "default",
                                    "flow", now_ms=NOW)

    whole = detail()
    status = manager.status("default", "flow")
    assert dv.deployment_detail_json(whole)["quality"] == status["quality"]  # the same figures below the sample size
    assert [(v.version, v.role, v.route is not None) for v in whole.versions] == [
        ("1", "primary", True), ("2", "canary", True), ("7", "retired", False)]
    first = whole.versions[0]
    assert first.quality is not None and (first.quality.requests, first.quality.errors) == (21, 1)
    assert first.error_rate == pytest.approx(1 / 21) and first.rps == pytest.approx(0.1)
    assert whole.versions[1].rps == pytest.approx(0.4)
    assert [e.reason for e in whole.events] == ["Scaled", "ColdStart"] and whole.last_cold_start_s == 2.5
    assert whole.state == "ready" and whole.drift["replicas"][0]["available"] is False  # nothing listens there

    monkeypatch.setattr(dv, "QUALITY_SAMPLE", 5)
    newest = detail()
    assert newest.sample.outcomes == 5 and newest.sample.oldest_ms == NOW - 1000
    assert [(v.version, v.quality.requests if v.quality else 0) for v in newest.versions] == [("1", 1), ("2", 4)]

    with pytest.raises(ResourceDoesNotExist, match="nope"):
        dv.deployment_detail(manager, services.deployments, services.outcomes, services.events, "default", "nope",
                             now_ms=NOW)
