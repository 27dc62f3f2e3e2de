"""``/api/v1/studies`` against a real ``capstan server`` on a loopback port, over the stores a study ran on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from tuning_helpers import run, spec

from capstan.settings import Settings
from helpers.server import ServerProcess, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("studies-api") / "home"
    settings = Settings.for_home(home)
    run(settings, spec("older", "quadratic", max_trials=1))
    run(settings, spec("api", "quadratic", max_trials=3, parameters={"x": {"type": "float", "min": 0.0, "max": 4.0}}))
    with start_server(home) as server:
        yield server


def test_list_and_show(server: ServerProcess) -> None:
    listed = httpx.get(f"{server.url}/api/v1/studies", timeout=30)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [s["name"] for s in body["studies"]] == ["api", "older"] and body["next_page_token"] is None
    assert body["studies"][0]["counts"]["COMPLETE"] == 3 and "trials" not in body["studies"][0]
    shown = httpx.get(f"{server.url}/api/v1/studies/api", timeout=30).json()["study"]
    assert shown["state"] == "Succeeded" and len(shown["trials"]) == 3
    best = max(shown["trials"], key=lambda t: t["value"])
    assert shown["best_trial"] == best and best["run_id"]
    assert shown["spec"]["objective"] == {"metric": "score", "goal": "maximize", "additional_metrics": []}


def test_a_missing_study_or_another_project_answers_404_and_bad_paging_400(server: ServerProcess) -> None:
    missing = httpx.get(f"{server.url}/api/v1/studies/nope", timeout=30)
    assert missing.status_code == 404 and "study 'nope' does not exist" in missing.json()["message"]
    other = httpx.get(f"{server.url}/api/v1/studies/api", headers={"X-Capstan-Project": "elsewhere"}, timeout=30)
    assert other.status_code == 404
    bad = httpx.get(f"{server.url}/api/v1/studies", params={"max_results": 0}, timeout=30)
    assert bad.status_code == 400 and "max_results" in bad.text


def test_pages(server: ServerProcess) -> None:
    first = httpx.get(f"{server.url}/api/v1/studies", params={"max_results": 1}, timeout=30).json()
    assert [s["name"] for s in first["studies"]] == ["api"] and first["next_page_token"]
    second = httpx.get(f"{server.url}/api/v1/studies", params={"max_results": 1,
                                                                "page_token": first["next_page_token"]},
                       timeout=30).json()
    assert [s["name"] for s in second["studies"]] == ["older"] and second["next_page_token"] is None
