"""``capstan k8s apply``: server-side apply of rendered manifests, against the in-memory API EMULATOR
(tests/k8s/emulator.py, a real HTTP server reached through a generated kubeconfig; it validates what it is sent
and answers refusals as the API server does), or against the real cluster of ``CAPSTAN_TEST_KUBECONFIG`` (these
tests skip with that reason when it is not set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from emulator import Cluster

from capstan.cli.main import main
from capstan.k8s.client import JOB, KubeApi, KubeNotFound, connect

ETL = Path(__file__).parents[2] / "examples" / "pipelines" / "etl.py"


@pytest.fixture
def api(cluster: Cluster) -> Iterator[KubeApi]:
    """A client of the cluster, for reading back; the Jobs the test applied are deleted afterwards."""
    client = connect(kubeconfig=str(cluster.kubeconfig))
    yield client
    for job in client.list(JOB, labels={"app.kubernetes.io/managed-by": "capstan"}).items:
        client.delete(JOB, job["metadata"]["name"], propagation="Background")
    client.close()


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def rendered(tmp_path: Path, capsys: pytest.CaptureFixture[str], namespace: str) -> Path:
    """The Jobs of the example pipeline, as `capstan k8s render pipeline` writes them, for ``namespace``."""
    out = tmp_path / "manifests"
    code, _, err = run(["k8s", "render", "pipeline", str(ETL), "-o", str(out), "--image", "example/etl:1"], capsys)
    assert code == 0, err
    for path in out.glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


def test_apply_creates_then_reapplies_the_rendered_jobs(cluster: Cluster, api: KubeApi, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = rendered(tmp_path, capsys, api.namespace)
    files = sorted(out.glob("*.yaml"))
    code, stdout, err = run(["k8s", "apply", str(out), "--kubeconfig", str(cluster.kubeconfig)], capsys)
    assert code == 0, err
    assert stdout.count(f"applied in namespace {api.namespace}") == len(files) > 0
    for path in files:
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        assert api.get(JOB, name)["metadata"]["name"] == name
    if cluster.emulator is not None:
        emu = cluster.emulator
        assert all(ct == "application/apply-patch+yaml" for m, p, ct in emu.requests if m == "PATCH")
        assert set(emu.field_managers) == {"capstan"}
    code, stdout, err = run(["k8s", "apply", str(out), "--kubeconfig", str(cluster.kubeconfig)], capsys)
    assert code == 0, err  # applying the same manifests again changes nothing and is fine


def test_a_manifest_the_server_refuses_prints_its_message_with_the_field(cluster: Cluster, api: KubeApi,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = rendered(tmp_path, capsys, api.namespace)
    assert run(["k8s", "apply", str(out), "--kubeconfig", str(cluster.kubeconfig)], capsys)[0] == 0
    first = sorted(out.glob("*.yaml"))[0]
    doc = yaml.safe_load(first.read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["image"] = "example/etl:2"  # a Job's template is immutable
    first.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, stdout, err = run(["k8s", "apply", str(out), "--kubeconfig", str(cluster.kubeconfig)], capsys)
    assert code == 1
    name = doc["metadata"]["name"]
    assert f'error: Job/{name}: Job.batch "{name}" is invalid: spec.template: ' in err
    assert "field is immutable" in err
    assert "1 of" in err and "refused by the API server" in err
    assert stdout.count("applied") == len(list(out.glob("*.yaml"))) - 1  # the others still went through


def test_a_field_owned_by_another_manager_conflicts_unless_forced(cluster: Cluster, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    emu = cluster.kubelet()
    out = rendered(tmp_path, capsys, emu.namespace)
    path = sorted(out.glob("*.yaml"))[0]
    doc = yaml.safe_load(path.read_text())
    emu.put({**doc, "spec": {**doc["spec"], "ttlSecondsAfterFinished": 60}}, "jobs")  # created by someone else
    args = ["k8s", "apply", str(path), "--kubeconfig", str(cluster.kubeconfig)]
    code, _, err = run(args, capsys)
    assert code == 1
    assert 'conflict with "test": .spec.ttlSecondsAfterFinished' in err
    assert "--force-conflicts takes the fields over" in err
    code, _, err = run([*args, "--force-conflicts"], capsys)
    assert code == 0, err
    assert emu.get("jobs", doc["metadata"]["name"])["spec"]["ttlSecondsAfterFinished"] == 3600  # type: ignore[index]


def test_invalid_manifests_are_reported_and_nothing_is_sent(cluster: Cluster, api: KubeApi, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = rendered(tmp_path, capsys, api.namespace)
    path = sorted(out.glob("*.yaml"))[0]
    doc = yaml.safe_load(path.read_text())
    doc["spec"]["backofLimit"] = 3
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, stdout, err = run(["k8s", "apply", str(out), "--kubeconfig", str(cluster.kubeconfig)], capsys)
    assert code == 1
    assert f"Job/{doc['metadata']['name']}: spec.backofLimit: " in err
    assert "nothing was applied" in err and stdout == ""
    for other in out.glob("*.yaml"):
        with pytest.raises(KubeNotFound):
            api.get(JOB, yaml.safe_load(other.read_text())["metadata"]["name"])
    if cluster.emulator is not None:
        assert [r for r in cluster.emulator.requests if r[0] != "GET"] == []


def test_a_pipeline_source_is_rendered_and_applied(cluster: Cluster, api: KubeApi, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["k8s", "apply", str(ETL), "--kubeconfig", str(cluster.kubeconfig), "--project",
                        api.namespace, "--image", "example/etl:1"], capsys)
    assert code == 0, err
    jobs = api.list(JOB, labels={"capstan.dev/pipeline": "etl"}).items
    assert jobs and all(j["spec"]["template"]["spec"]["containers"][0]["image"] == "example/etl:1" for j in jobs)


def test_an_unreachable_cluster_or_a_missing_context_is_one_line(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "kubeconfig"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "down", "clusters": [{"name": "c", "cluster": '
        '{"server": "http://127.0.0.1:9"}}], "users": [{"name": "u", "user": {"token": "t"}}], "contexts": '
        '[{"name": "down", "context": {"cluster": "c", "user": "u", "namespace": "x"}}]}', encoding="utf-8")
    out = rendered(tmp_path, capsys, "x")
    code, _, err = run(["k8s", "apply", str(out), "--kubeconfig", str(config)], capsys)
    assert code == 1
    assert err.startswith("error: cannot reach the Kubernetes API server: ") and err.count("\n") == 1
    code, _, err = run(["k8s", "apply", str(out), "--kubeconfig", str(config), "--context", "prod"], capsys)
    assert code == 1
    assert err == "error: no usable Kubernetes configuration: Context 'prod' not found\n"
