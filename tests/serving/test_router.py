"""The deployment router (capstan.serving.router) between a real client and real replicas on loopback ports.

The deployment store is an in-memory fake; replicas are the real serving app (constant "models", so each answer
tells which version gave it) under uvicorn; the router's routes run in a FastAPI app under uvicorn too.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from test_router_support import INFER, NAME, PROJECT, ROW, FakeStore, deployment, replica, router_server

from capstan.serving.outcomes import MemoryOutcomeStore
from capstan.serving.router import COLD_START_HEADER, DeploymentRouter, RouterOptions
from capstan.serving.traffic import shadow_sampled

FAST = RouterOptions(flush_interval_s=0.05, report_interval_s=0.05, cold_start_poll_s=0.02, table_ttl_s=0.2)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def outcomes() -> MemoryOutcomeStore:
    return MemoryOutcomeStore()


def _eventually(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]  # a zero-argument predicate
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _post_many(url: str, n: int, *, threads: int = 8, headers: dict[str, str] | None = None) -> list[httpx.Response]:
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda i: client.post(INFER, json=ROW, headers={"x-request-id": f"r{i}",
                                                                              **(headers or {})}), range(n)))


@pytest.fixture
def two_versions(store: FakeStore) -> Iterator[None]:
    """Primary version 6 (predicts 0) and canary version 7 (predicts 1), one replica each."""
    with replica("a", 6, 0.0) as a, replica("b", 7, 1.0) as b:
        store.put(deployment(canary=7))
        store.put_replica(a.record())
        store.put_replica(b.record())
        yield


def test_split_follows_the_weights_within_binomial_tolerance(store: FakeStore, outcomes: MemoryOutcomeStore,
                                                            two_versions: None) -> None:
    router = DeploymentRouter(store, outcomes, options=FAST, draw=random.Random(20).random)
    n = 2000
    body = orjson.dumps(ROW)

    async def send_all() -> list[tuple[int, str, bytes]]:
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> tuple[int, str, bytes]:
            async with gate:
                answer = await router.handle(PROJECT, NAME, method="POST", path=INFER.split(NAME, 1)[1],
                                             headers=[("x-request-id", f"r{i}")], body=body)
                return answer.status_code, answer.headers["x-capstan-version"], bytes(answer.body)

        try:
            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await router.aclose()

    answers = asyncio.run(send_all())
    assert all(status == 200 for status, _, _ in answers)
    canary = sum(version == "7" for _, version, _ in answers)
    # each answer came from the version its header names (version 7 predicts 1.0)
    assert all((orjson.loads(b)["outputs"][0]["data"] == [1.0]) == (v == "7") for _, v, b in answers)
    sigma = math.sqrt(n * 0.2 * 0.8)
    assert abs(canary - 0.2 * n) < 4.5 * sigma, canary  # p(false failure) < 1e-5
    rows = outcomes.outcomes(PROJECT, NAME)
    assert len(rows) == n and sum(o.version == "7" and o.role == "canary" for o in rows) == canary
    assert {o.predictions for o in rows} == {"[0.0]", "[1.0]"}
    assert store.load(PROJECT, NAME, since_ms=0), "the router reported its load"
    assert sum(r.completed for r in store.reports) == n


def test_pinning_by_version_and_role_and_unknown_pins(store: FakeStore, two_versions: None) -> None:
    router = DeploymentRouter(store, options=FAST)
    with router_server(router) as url, httpx.Client(base_url=url) as client:
        for pin, version in (("7", "7"), ("canary", "7"), ("6", "6"), ("primary", "6")):
            for _ in range(5):
                answer = client.post(INFER, json=ROW, headers={"x-capstan-version": pin})
                assert answer.status_code == 200 and answer.headers["x-capstan-version"] == version
        unknown = client.post(INFER, json=ROW, headers={"x-capstan-version": "9"})
        assert unknown.status_code == 404
        assert unknown.json()["versions"] == ["6", "7", "canary", "primary"] and "'9'" in unknown.json()["error"]
        missing = client.post(f"/deployments/nope/v2/models/{NAME}/infer", json=ROW)
        assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_every_protocol_passes_through_and_binary_answers_are_recorded(store: FakeStore,
                                                                       outcomes: MemoryOutcomeStore) -> None:
    with replica("a", 6, 3.5) as a:
        store.put(deployment())
        store.put_replica(a.record())
        router = DeploymentRouter(store, outcomes, options=FAST)
        with router_server(router) as url:
            host = url.removeprefix("http://")
            client = triton.InferenceServerClient(f"{host}/deployments/{NAME}")
            assert client.is_model_ready(NAME)
            for binary in (True, False):
                tensor = triton.InferInput("input-0", [2, 2], "FP64")
                tensor.set_data_from_numpy(np.ones((2, 2)), binary_data=binary)
                out = triton.InferRequestedOutput("output-0", binary_data=binary)
                result = client.infer(NAME, [tensor], outputs=[out], headers={"x-request-id": f"triton-{binary}"})
                assert result.as_numpy("output-0").tolist() == [3.5, 3.5]
            client.close()
            with httpx.Client(base_url=url) as http:
                v1 = http.post(f"/deployments/{NAME}/v1/models/{NAME}:predict", json={"instances": [[1, 2]]})
                assert v1.json() == {"predictions": [3.5]} and v1.headers["x-capstan-version"] == "6"
                mlflow = http.post(f"/deployments/{NAME}/invocations",
                                   json={"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2]]}})
                assert mlflow.status_code == 200 and mlflow.json()["predictions"] == [3.5]
                assert mlflow.headers["x-request-id"]  # generated when the client sent none
                bad = http.post(f"/deployments/{NAME}/v1/models/{NAME}:predict", json={"instances": "x"})
                assert bad.status_code == 400 and "error" in bad.json()
        recorded = {o.request_id: o for o in outcomes.outcomes(PROJECT, NAME)}
        assert recorded["triton-True"].predictions == recorded["triton-False"].predictions == "[3.5,3.5]"
        assert any(o.status == 400 for o in recorded.values())


def test_shadow_gets_a_copy_of_sampled_requests_and_disagreement_is_recorded(store: FakeStore,
                                                                            outcomes: MemoryOutcomeStore) -> None:
    with replica("a", 6, 0.0) as a, replica("s", 8, 1.0) as s:
        store.put(deployment(shadow=8, shadow_traffic=50))
        store.put_replica(a.record())
        store.put_replica(s.record())
        router = DeploymentRouter(store, outcomes, options=FAST)
        with router_server(router) as url:
            answers = _post_many(url, 200)
            assert all(r.headers["x-capstan-version"] == "6" for r in answers)  # the shadow never answers
            expected = {f"r{i}" for i in range(200) if shadow_sampled(f"r{i}", 50)}
            _eventually(lambda: len([o for o in outcomes.outcomes(PROJECT, NAME) if o.role == "shadow"])
                        == len(expected))
    shadows = [o for o in outcomes.outcomes(PROJECT, NAME) if o.role == "shadow"]
    assert {o.request_id for o in shadows} == expected and 60 < len(expected) < 140
    assert all(o.version == "8" and o.disagrees is True and o.predictions == "[1.0]" for o in shadows)


def test_zero_failures_when_a_replica_dies_or_drains_under_load(store: FakeStore) -> None:
    with replica("a", 6, 0.0) as a, replica("b", 6, 0.0) as b, replica("c", 6, 0.0) as c:
        store.put(deployment())
        for r in (a, b, c):
            store.put_replica(r.record())
        router = DeploymentRouter(store, options=FAST)
        with router_server(router) as url:
            done = threading.Event()
            results: list[int] = []

            def load() -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    while not done.is_set():
                        results.append(client.post(INFER, json=ROW).status_code)

            workers = [threading.Thread(target=load) for _ in range(6)]
            for w in workers:
                w.start()
            _eventually(lambda: len(results) > 100)
            a.stop()  # the store still lists it as ready: the router meets refused connections
            b.model.ready = False  # a draining replica answers 503
            mark = len(results)
            _eventually(lambda: len(results) > mark + 200)
            done.set()
            for w in workers:
                w.join()
    assert results.count(200) == len(results), sorted(set(results))


def test_rollback_and_promote_under_load_fail_no_request(store: FakeStore) -> None:
    with replica("a", 6, 0.0) as a, replica("b", 7, 1.0) as b, replica("c", 7, 1.0) as c:
        store.put(deployment(canary=7))
        store.put_replica(a.record())
        store.put_replica(b.record())
        router = DeploymentRouter(store, options=FAST)
        with router_server(router) as url:
            done = threading.Event()
            seen: list[tuple[int, str]] = []

            def load() -> None:
                with httpx.Client(base_url=url, timeout=30) as client:
                    while not done.is_set():
                        answer = client.post(INFER, json=ROW)
                        seen.append((answer.status_code, answer.headers.get("x-capstan-version", "")))

            def after(more: int) -> None:
                mark = len(seen)
                _eventually(lambda: len(seen) > mark + more)

            workers = [threading.Thread(target=load) for _ in range(6)]
            for w in workers:
                w.start()
            after(60)
            # rollback: the canary is dropped; its replica drains (503), then goes away
            store.put(deployment(revision=2))
            b.model.ready = False
            store.put_replica(b.record("draining"))
            after(40)
            b.stop()
            store.delete_replica("b")
            after(40)
            assert {v for _, v in seen[-20:]} == {"6"}
            # a new canary of version 7 (replica c), then promote: 7 becomes the primary and 6 drains, then goes
            store.put(deployment(canary=7, revision=3))
            store.put_replica(c.record())
            after(60)
            store.put(deployment(primary=7, revision=4))
            a.model.ready = False
            store.put_replica(a.record("draining"))
            after(40)
            a.stop()
            store.delete_replica("a")
            after(60)
            done.set()
            for w in workers:
                w.join()
    assert [s for s in seen if s[0] != 200] == []
    assert {v for _, v in seen[-20:]} == {"7"}


def test_cold_start_reports_demand_waits_and_measures(store: FakeStore, outcomes: MemoryOutcomeStore) -> None:
    store.put(deployment())
    router = DeploymentRouter(store, outcomes, options=FAST)
    with router_server(router) as url, httpx.Client(base_url=url, timeout=30) as client:
        answer: list[httpx.Response] = []
        waiter = threading.Thread(target=lambda: answer.append(client.post(INFER, json=ROW,
                                                                           headers={"x-request-id": "cold"})))
        waiter.start()
        _eventually(lambda: any(r.waiting == 1 for r in store.reports))  # demand reported while it waits
        with replica("a", 6, 0.0) as a:
            store.put_replica(a.record())
            waiter.join()
        assert answer[0].status_code == 200
        waited = float(answer[0].headers[COLD_START_HEADER])
        assert waited > 0
    cold = [o for o in outcomes.outcomes(PROJECT, NAME) if o.request_id == "cold"]
    assert cold[0].cold_start_ms == pytest.approx(waited, abs=1)
    assert router.load_snapshot()[(PROJECT, NAME)]["cold_starts"] == 1


def test_nothing_ready_within_the_bound_is_a_503_with_retry_after(store: FakeStore) -> None:
    store.put(deployment())
    options = RouterOptions(cold_start_timeout_s=0.3, cold_start_poll_s=0.05)
    with router_server(DeploymentRouter(store, options=options)) as url:
        answer = httpx.post(url + INFER, json=ROW)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "1"
    assert "cold start" in answer.json()["error"]
