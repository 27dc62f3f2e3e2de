"""The queue pages in real Chromium against a real server with authentication on.

A cohort of two ClusterQueues is applied and workloads are submitted through ``/api/v1/queue`` (one preempts
another, which is then withdrawn; others wait); earlier, finished admissions of another project give the usage
report fixed numbers. The pages show what their twins and ``/api/v1/queue`` say: quota bars per flavor and
resource (used, lent, idle, borrowed), pending workloads in admission order with the queue's explanation,
admitted workloads, the preemption, usage with prices; a viewer sees only their project's workloads; an unknown
queue is a 404 page.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from uikit import UiPage, api, start_ui_server

from capstan.queue.manager import QueueManager
from capstan.queue.model import PodSet
from capstan.resources.quantity import format_quantity, parse_quantity
from capstan.services import Services
from helpers.clock import FakeClock
from helpers.server import ServerProcess

CONFIG = """
flavors: [{name: a100}, {name: cpu-pool}]
priorityClasses:
  - {name: low, value: 0}
  - {name: high, value: 1000}
defaultPriorityClass: low
cohorts: [{name: research}]
clusterQueues:
  - name: team-a
    cohort: research
    preemption: {withinClusterQueue: LowerPriority}
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 4}]}]
      - coveredResources: [cpu, memory]
        flavors: [{name: cpu-pool, resources: [{name: cpu, nominalQuota: 16}, {name: memory, nominalQuota: 64Gi}]}]
  - name: team-b
    cohort: research
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: a100, resources: [{name: gpu, nominalQuota: 2}]}]
localQueues:
  - {name: ml, clusterQueue: team-a, project: alpha}
  - {name: ops, clusterQueue: team-b, project: beta}
  - {name: an, clusterQueue: team-b, project: analytics}
"""
HOUR_MS = 3_600_000
Seeded = dict[str, str]


@pytest.fixture(scope="module")
def seeded() -> Seeded:
    return {}


def _seed(ids: Seeded) -> Callable[[Services], None]:
    def seed(services: Services) -> None:
        auth = services.auth
        auth.create_user("root", admin=True)
        ids["root"] = auth.create_token("root").secret
        auth.create_user("vera")
        auth.grant("vera", "alpha", "viewer")
        ids["vera"] = auth.create_token("vera").secret
        # Two admissions of project analytics that ended hours ago: 1 GPU for 2 h and 2 GPUs for 1 h.
        clock = FakeClock(int(time.time() * 1000) - 3 * HOUR_MS)
        mgr = QueueManager(services.queue.get(), clock=clock, events=services.events)
        mgr.apply_config(CONFIG)
        for wid, gpus in (("h1", "1"), ("h2", "2")):
            mgr.submit(wid, "an", [PodSet("main", 1, {"gpu": parse_quantity(gpus)})], user="hana")
        mgr.run_until_stable()
        clock.advance(HOUR_MS)
        mgr.finish("h2")
        clock.advance(HOUR_MS)
        mgr.finish("h1")

    return seed


def _submit(server: ServerProcess, token: str, wid: str, queue: str, *, priority: str | None = None,
            **requests: str) -> Any:
    body: dict[str, Any] = {"id": wid, "queue": queue, "pod_sets": [{"count": 1, "requests": requests}]}
    if priority:
        body["priority_class"] = priority
    return api(server, "POST", "/api/v1/queue/workloads", token=token, json=body)


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, seeded: Seeded) -> Iterator[ServerProcess]:
    with start_ui_server(tmp_path_factory.mktemp("ui-queues"), _seed(seeded)) as server:
        root = seeded["root"]
        assert _submit(server, root, "b1", "ops", gpu="3")["admitted"] == ["b1"]  # borrows 1 from team-a
        assert _submit(server, root, "a1", "ml", gpu="2")["admitted"] == ["a1"]
        assert _submit(server, root, "a2", "ml", gpu="2")["admitted"] == []  # no room left in the cohort
        assert _submit(server, root, "a3", "ml", priority="high", gpu="2")["preempting"] == ["a1"]
        assert api(server, "POST", "/api/v1/queue/workloads/a1/cancel", token=root)["admitted"] == ["a3"]
        assert _submit(server, root, "a4", "ml", gpu="1", cpu="4", memory="8Gi")["admitted"] == ["a4"]
        assert _submit(server, root, "a5", "ml", gpu="1")["admitted"] == []
        assert _submit(server, root, "b2", "ops", gpu="2")["admitted"] == []
        yield server


def _as(ui: UiPage, token: str) -> UiPage:
    ui.page.set_extra_http_headers({"Authorization": f"Bearer {token}"})
    return ui


def _quota_rows(ui: UiPage, table: str) -> dict[tuple[str, str], list[str]]:
    return {(row[0], row[1]): row[3:] for row in ui.cells(table)}


def _shown(entry: dict[str, Any], *keys: str) -> list[str]:
    """The quota numbers of a twin's entry as the page formats them."""
    return [format_quantity(round(entry[k] * 1000), entry["resource"]) for k in keys]


def _segments(ui: UiPage, table: str, flavor: str, resource: str) -> dict[str, float]:
    bar = ui.page.locator(f'{table} tr[data-flavor="{flavor}"][data-resource="{resource}"] .quota-bar .seg')
    widths = bar.evaluate_all("segs => segs.map(s => [s.dataset.kind, parseFloat(s.style.width)])")
    return {kind: width for kind, width in widths}


def test_overview_quota_bars_match_the_api(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _as(ui, root).visit("/ui/queues")
    status = api(ui_server, "GET", "/api/v1/queue/status", token=root)["cluster_queues"]
    twin = api(ui_server, "GET", "/api/v1/views/queues", token=root)
    assert [q["cluster_queue"] for q in twin["cluster_queues"]] == [s["cluster_queue"] for s in status]
    for queue in status:
        name = queue["cluster_queue"]
        card = ui.page.locator(f'article[data-cluster-queue="{name}"]')
        assert card.locator(".pending-count").inner_text() == str(queue["pending"])
        assert card.locator(".admitted-count").inner_text() == str(queue["admitted"])
        shown = _quota_rows(ui, f"#quota-{name}")
        assert shown == {(q["flavor"], q["resource"]): _shown(q, "used", "nominal", "borrowed", "lent")
                         for q in queue["quota"]}
    # team-a: 3 of its 4 GPUs used, the idle one lent to team-b; team-b: 3 used on a nominal 2 (1 borrowed)
    assert _segments(ui, "#quota-team-a", "a100", "gpu") == {"used": 75.0, "lent": 25.0}
    assert _segments(ui, "#quota-team-b", "a100", "gpu") == {"used": 66.667, "borrowed": 33.333}
    assert ui.page.locator('#quota-team-b tr[data-resource="gpu"] .nominal-mark').count() == 1
    assert _quota_rows(ui, "#quota-team-a")[("cpu-pool", "memory")] == ["8Gi", "64Gi", "0", "0"]
    assert _segments(ui, "#quota-team-a", "cpu-pool", "cpu") == {"used": 25.0, "idle": 75.0}

    cohort = twin["cohorts"][0]
    assert cohort["cohort"] == "research" and cohort["cluster_queues"] == ["team-a", "team-b"]
    assert {(r[0], r[1]): r[3:] for r in ui.cells("#cohort-research")} == {
        (q["flavor"], q["resource"]): _shown(q, "used", "nominal", "borrowed") for q in cohort["quota"]}
    assert _segments(ui, "#cohort-research", "a100", "gpu") == {"used": 100.0}  # 6 of the pool's 6 GPUs

    preemptions = [[p["workload"], p["project"], p["cluster_queue"], p["preemptor"]] for p in twin["preemptions"]]
    assert preemptions == [["a1", "alpha", "team-a", "a3"]]
    assert [row[1:5] for row in ui.cells("#preemptions-table")] == preemptions
    link = ui.page.locator("#preemptions-table tbody tr a").first
    assert link.get_attribute("href") == "/ui/timeline/workload/a1?project=alpha"  # the timeline's project


def test_cluster_queue_lists_pending_in_order_with_why(ui: UiPage, ui_server: ServerProcess,
                                                       seeded: Seeded) -> None:
    root = seeded["root"]
    _as(ui, root).visit("/ui/queues/team-a")
    twin = api(ui_server, "GET", "/api/v1/views/queues/team-a", token=root)
    pending = twin["pending"]["workloads"]
    assert [(w["id"], w["position"]) for w in pending] == [("a2", 1), ("a5", 2)]
    rows = ui.cells("#pending-table")
    assert [(r[0], r[1]) for r in rows] == [("a2", "1"), ("a5", "2")]
    why = api(ui_server, "GET", "/api/v1/queue/workloads/a2/why", token=root)
    assert pending[0]["why"]["text"] == why["text"]
    row = ui.page.locator('#pending-table tr[data-workload="a2"]')
    assert row.locator(".reason").inner_text() == why["reason"] == "WaitingForQuota"
    assert row.locator(".message").inner_text() == why["message"]
    assert "team-a uses 3/4 nominal" in why["message"]
    row.locator("details summary").click()  # the full explanation, as `capstan why` prints it
    assert row.locator("pre.why-text").inner_text() == why["text"]
    assert "Hint:      would be admitted if priority >= 1001" in why["text"]
    assert row.locator("a").first.get_attribute("href") == "/ui/timeline/workload/a2?project=alpha"

    admitted = twin["admitted"]["workloads"]
    assert [w["id"] for w in admitted] == [r[0] for r in ui.cells("#admitted-table")] == ["a3", "a4"]
    shown = {r[0]: r for r in ui.cells("#admitted-table")}
    assert shown["a4"][8] == admitted[1]["flavors"] == "cpu=cpu-pool, gpu=a100, memory=cpu-pool"
    assert shown["a3"][5] == "1000"
    assert [r[1] for r in ui.cells("#preemptions-table")] == ["a1"]
    ui.screenshot()

    # the workload's link opens its timeline (the page of /ui/timeline, in the workload's project)
    with ui.page.expect_navigation() as opened:
        row.locator("a").first.click()
    assert opened.value is not None and opened.value.status == 200
    ui.settle()
    assert "a2" in ui.text("h1")

    # one workload per page: the pending list moves on, the admitted list stays on its first page
    ui.visit("/ui/queues/team-a?max_results=1")
    assert [r[0] for r in ui.cells("#pending-table")] == ["a2"]
    ui.page.locator("#pending-next").click()
    ui.settle()
    assert [(r[0], r[1]) for r in ui.cells("#pending-table")] == [("a5", "2")]
    assert [r[0] for r in ui.cells("#admitted-table")] == ["a3"]
    assert ui.page.locator("#pending-next").count() == 0


def test_a_viewer_sees_only_their_projects_workloads(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    _as(ui, seeded["vera"]).visit("/ui/queues/team-b?project=alpha")
    assert "No quota" not in ui.text("#quota")  # quota is not secret
    assert ui.cells("#pending-table") == [["Nothing pending."]]
    assert "1 pending workload of projects you may not read" in ui.text("#pending-hidden")
    assert "1 admitted workload" in ui.text("#admitted-hidden")
    ui.visit("/ui/queues/team-a?project=alpha")
    assert [r[0] for r in ui.cells("#pending-table")] == ["a2", "a5"]
    ui.visit("/ui/queues?project=alpha")
    assert [row[2] for row in ui.cells("#preemptions-table")] == ["alpha"]
    ui.visit("/ui/queues?project=beta", status=403)
    assert "no role in project 'beta'" in ui.text("#error-message")


def test_usage_matches_the_api(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _as(ui, root).visit("/ui/queues")
    ui.page.locator("#usage-link").click()
    ui.page.wait_for_url("**/ui/usage?project=default")
    ui.settle()
    ui.page.locator("#usage-price").fill("gpu=2.5,cpu=0.05")
    ui.page.locator("#usage-apply").click()
    ui.settle()
    twin = api(ui_server, "GET", "/api/v1/queue/usage?by=project&since=7d&price=gpu%3D2.5%2Ccpu%3D0.05",
               token=root)
    rows = {r[0]: r[1:] for r in ui.cells("#usage-table")}
    assert set(rows) == {r["key"] for r in twin["rows"]} == {"alpha", "beta", "analytics"}
    analytics = next(r for r in twin["rows"] if r["key"] == "analytics")  # ended: its numbers are fixed
    assert analytics["gpu_hours"] == pytest.approx(4.0) and analytics["cost"] == pytest.approx(10.0)
    assert rows["analytics"] == ["2", f"{analytics['gpu_hours']:.6g}", "0", "0", f"{analytics['cost']:.6g}"]
    for r in twin["rows"]:  # running admissions keep accruing between the two reads; their counts do not
        assert rows[r["key"]][0] == str(r["workloads"])

    ui.page.locator("#usage-by").select_option("user")
    ui.page.locator("#usage-apply").click()
    ui.settle()
    by_user = api(ui_server, "GET", "/api/v1/queue/usage?by=user", token=root)
    assert sorted(r[0] for r in ui.cells("#usage-table")) == sorted(r["key"] for r in by_user["rows"])
    assert "hana" in [r[0] for r in ui.cells("#usage-table")]

    ui.page.locator("#usage-since").fill("yesterday")
    ui.page.locator("#usage-apply").click()
    ui.settle()
    answer = httpx.get(f"{ui_server.url}/api/v1/queue/usage", params={"since": "yesterday"},
                       headers={"Authorization": f"Bearer {root}"})
    assert answer.status_code == 400
    assert ui.text("#usage-error") == answer.json()["message"]
    assert ui.page.locator("#usage-table").count() == 0


def test_unknown_queue_is_a_404_page(ui: UiPage, ui_server: ServerProcess, seeded: Seeded) -> None:
    root = seeded["root"]
    _as(ui, root).visit("/ui/queues/no-such-queue", status=404)
    assert "ClusterQueue 'no-such-queue' does not exist (have: team-a, team-b)" in ui.text("#error-message")
    assert ui.page.locator("#back-link").get_attribute("href") == "/ui/queues"
    answer = httpx.get(f"{ui_server.url}/api/v1/views/queues/no-such-queue",
                       headers={"Authorization": f"Bearer {root}"})
    assert answer.status_code == 404 and answer.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    ui.visit("/ui/queues/team-a?pending_token=x", status=400)
    assert "pending_token" in ui.text("#error-message")
