"""Feedback (ground truth for request ids) through the router's routes, and the A/B quality report it feeds."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import pytest
from test_router_support import INFER, NAME, PROJECT, ROW, FakeStore, deployment, replica, router_server

from capstan.serving.abtest import deployment_quality, two_proportion_z_test
from capstan.serving.outcomes import MemoryOutcomeStore, Outcome
from capstan.serving.router import DeploymentRouter, RouterOptions

FEEDBACK = f"/deployments/{NAME}/feedback"


@pytest.fixture
def served() -> Iterator[tuple[str, MemoryOutcomeStore]]:
    """Primary version 6 predicts 0, canary version 7 (50 %) predicts 1."""
    store, outcomes = FakeStore(), MemoryOutcomeStore()
    with replica("a", 6, 0.0) as a, replica("b", 7, 1.0) as b:
        store.put(deployment(canary=7, canary_traffic=50))
        store.put_replica(a.record())
        store.put_replica(b.record())
        router = DeploymentRouter(store, outcomes, options=RouterOptions(flush_interval_s=0.05),
                                  draw=random.Random(3).random)
        with router_server(router) as url:
            yield url, outcomes


def test_feedback_feeds_accuracy_and_the_significance_test(served: tuple[str, MemoryOutcomeStore]) -> None:
    url, outcomes = served
    with httpx.Client(base_url=url) as client:
        versions = {}
        for i in range(80):
            answer = client.post(INFER, json=ROW, headers={"x-request-id": f"q{i}"})
            versions[f"q{i}"] = answer.headers["x-capstan-version"]
        # the truth is 1 for three requests in four: version 7 (always 1) is right more often than 6 (always 0)
        truths = [{"request_id": rid, "truth": 0 if i % 4 == 0 else 1} for i, rid in enumerate(versions)]
        one = client.post(FEEDBACK, json=truths[0])
        assert one.status_code == 200 and one.json() == {"recorded": 1, "unknown": []}
        many = client.post(FEEDBACK, json=[*truths[1:], {"request_id": "never-sent", "truth": 1}])
        assert many.status_code == 200 and many.json() == {"recorded": 79, "unknown": ["never-sent"]}
        report = client.get(f"/deployments/{NAME}/quality").json()

    expected = {}
    for version in ("6", "7"):
        mine = [i for i, rid in enumerate(versions) if versions[rid] == version]
        correct = sum((0 if i % 4 == 0 else 1) == (1 if version == "7" else 0) for i in mine)
        expected[version] = (correct, len(mine))
    by_version = {v["version"]: v for v in report["versions"]}
    for version, (correct, n) in expected.items():
        assert by_version[version]["labelled"] == n and by_version[version]["correct"] == correct
        assert by_version[version]["accuracy"] == pytest.approx(correct / n)
    assert report["task"] == "classification"
    comparison = report["comparison"]
    z, p = two_proportion_z_test(*expected["6"], *expected["7"])
    assert comparison["statistic"] == pytest.approx(z) and comparison["p_value"] == pytest.approx(p)
    assert comparison["verdict"].startswith("7 (canary) is significantly better")
    direct = deployment_quality(outcomes, PROJECT, NAME)  # what `deployments status` shows
    assert direct.comparison is not None and direct.comparison.p_value == comparison["p_value"]


def test_feedback_errors_name_the_problem(served: tuple[str, MemoryOutcomeStore]) -> None:
    url, _ = served
    with httpx.Client(base_url=url) as client:
        client.post(INFER, json=ROW, headers={"x-request-id": "known"})
        unknown = client.post(FEEDBACK, json={"request_id": "nope", "truth": 1})
        assert unknown.status_code == 404 and "'nope'" in unknown.json()["error"]
        for body, field in (({"truth": 1}, "request_id"), ({"request_id": "known"}, "truth"),
                            ([{"request_id": "known", "truth": 1}, {"request_id": 5, "truth": 1}], "[1].request_id"),
                            ([], "empty")):
            answer = client.post(FEEDBACK, json=body)
            assert answer.status_code == 400 and field in answer.json()["error"], answer.text
        garbage = client.post(FEEDBACK, content=b"{not json", headers={"content-type": "application/json"})
        assert garbage.status_code == 400 and "JSON" in garbage.json()["error"]
        other = client.post("/deployments/other/feedback", json={"request_id": "known", "truth": 1})
        assert other.status_code == 404 and "other" in other.json()["error"]
        assert client.get("/deployments/other/quality").status_code == 404


class _SlowOutcomeStore(MemoryOutcomeStore):
    """Writes each batch slowly and says when a write has begun."""

    def __init__(self) -> None:
        super().__init__()
        self.writing = threading.Event()

    def add(self, outcomes: Sequence[Outcome]) -> None:
        self.writing.set()
        time.sleep(0.5)
        super().add(outcomes)


def test_feedback_waits_for_a_batch_the_background_flush_is_still_writing() -> None:
    store, outcomes = FakeStore(), _SlowOutcomeStore()
    with replica("a", 6, 0.0) as a:
        store.put(deployment())
        store.put_replica(a.record())
        router = DeploymentRouter(store, outcomes, options=RouterOptions(flush_interval_s=0.05))
        with router_server(router) as url, httpx.Client(base_url=url) as client:
            client.post(INFER, json=ROW, headers={"x-request-id": "in-flight"})
            assert outcomes.writing.wait(10)  # the background flush took the outcome and is writing it
            answer = client.post(FEEDBACK, json={"request_id": "in-flight", "truth": 0})
            assert answer.status_code == 200 and answer.json() == {"recorded": 1, "unknown": []}, answer.text
