"""Pipelines to Jobs: every Job rendered from the example pipelines validates strictly against the official
Kubernetes schema (kubernetes-validate; schema-only, no API server) and passes the restricted profile; each step
setting lands in the right Job field; schedules become CronJobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

import capstan.pipelines as cp
from capstan.cli import k8s_render, k8s_render_pipeline
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import load_crds
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL
from capstan.k8s.pipeline_jobs import step_jobs
from capstan.k8s.pods import Resources, SecretEnv, restricted_violations
from capstan.k8s.render_pipelines import (
    COMPLETION_INDEX_FIELD,
    DEPENDS_ON,
    CronSchedule,
    JobOptions,
    StepJob,
    job_name,
    render_cron_job,
    render_pipeline_jobs,
    render_step_job,
)
from capstan.k8s.validate import validate_documents
from capstan.pipelines.dsl import Pipeline
from capstan.pipelines.loader import import_pipeline_module
from capstan.queue.config import parse_config

ROOT = Path(__file__).parents[2]
# Files that define or import a pipeline (profile_shard.py is a command a step runs, not a module to import).
EXAMPLE_FILES = sorted(p for p in (ROOT / "examples" / "pipelines").glob("*.py")
                       if "pipeline" in p.read_text(encoding="utf-8").split('"""', 2)[-1])
QUEUES = parse_config({
    "flavors": [{"name": "a100", "nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}],
    "clusterQueues": [{"name": "cq", "resourceGroups": [{"coveredResources": ["cpu", "gpu"], "flavors": [
        {"name": "a100", "resources": [{"name": "cpu", "nominalQuota": 64}, {"name": "gpu", "nominalQuota": 8}]}]}]}],
    "localQueues": [{"name": "team", "clusterQueue": "cq", "project": "team-a"}],
    "priorityClasses": [{"name": "high", "value": 1000}],
})


def _example_pipelines() -> list[tuple[str, Pipeline]]:
    found = []
    for file in EXAMPLE_FILES:
        module, _ = import_pipeline_module(str(file))
        found += [(f"{file.name}:{name}", obj) for name, obj in vars(module).items() if isinstance(obj, Pipeline)]
    return found


def test_examples_render_valid_restricted_jobs(k8s_crds_dir: Path) -> None:
    pipelines = _example_pipelines()
    assert len(pipelines) >= 2
    crds = load_crds([k8s_crds_dir])
    for ref, pipe in pipelines:
        jobs = render_pipeline_jobs(step_jobs(pipe.build(), ref), JobOptions(project="team-a"))
        assert len(jobs) == len([n for n in pipe.build().nodes.values() if n.parent is None])
        assert validate_documents(jobs, crds=crds) == [], ref
        for job in jobs:
            assert restricted_violations(job["spec"]["template"]["spec"]) == [], job["metadata"]["name"]


def test_etl_fields_and_dag_order() -> None:
    (pipe,) = [p for ref, p in _example_pipelines() if ref.startswith("etl.py")]
    jobs = {j["metadata"]["name"]: j for j in render_pipeline_jobs(step_jobs(pipe.build(), "etl.py:etl"))}
    order = list(jobs)
    assert order.index("etl-gather") < order.index("etl-clean") < order.index("etl-impute")
    clean = jobs["etl-clean"]
    assert clean["metadata"]["annotations"] == {DEPENDS_ON: "etl-gather"}
    spec = clean["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 4)
    env = spec["template"]["spec"]["containers"][0]["env"]
    assert {"name": "CHUNK_INDEX", "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}} in env
    assert {"name": "CHUNK_COUNT", "value": "4"} in env
    shard = next(j for n, j in jobs.items() if n.startswith("etl-profile-shard-"))
    assert shard["spec"]["parallelism"] == 2
    assert shard["spec"]["template"]["spec"]["containers"][0]["resources"] == {"requests": {"cpu": "500m"}}
    gather = jobs["etl-gather"]["spec"]
    assert (gather["backoffLimit"], gather["activeDeadlineSeconds"], gather["ttlSecondsAfterFinished"]) == \
        (2, 60, 3600)
    assert gather["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "step", "operator": "In", "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    assert gather["template"]["spec"]["containers"][0]["command"] == [
        "capstan", "worker", "run-step", "--pipeline", "etl.py:etl", "--node", "gather"]
    assert "suspend" not in gather


def _step(**kw: Any) -> StepJob:
    base: dict[str, Any] = {"pipeline": "train", "pipeline_ref": "p.py:train", "node": "fit", "step": "fit"}
    base.update(kw)
    return StepJob(**base)


def test_queue_flavor_gpu_image_and_secrets(k8s_crds_dir: Path) -> None:
    opts = JobOptions(project="team-a", queue_config=QUEUES, secret_env=(SecretEnv("AWS_SECRET", "s3", "key"),),
                      env_from_secrets=("capstan-store",), shm_bytes=2**30)
    job = render_step_job(_step(queue="team", priority_class="high", gpu_flavor="a100", image="acme/fit:1",
                                resources=Resources(cpu=4000, memory=16 * 2**30, gpu=2000), timeout_s=0.5), opts)
    assert validate_documents([job], crds=load_crds([k8s_crds_dir])) == []
    assert job["metadata"]["labels"][QUEUE_NAME_LABEL] == "team"
    assert job["metadata"]["labels"][PRIORITY_CLASS_LABEL] == "high"
    assert job["spec"]["suspend"] is True and job["spec"]["activeDeadlineSeconds"] == 1
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "acme/fit:1"
    assert c["resources"]["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert c["envFrom"] == [{"secretRef": {"name": "capstan-store"}}]
    assert {"name": "AWS_SECRET", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}} in c["env"]
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]


@pytest.mark.parametrize(("step", "message"), [
    (_step(queue="nope"), r"steps\[fit\]: queue: LocalQueue 'nope' does not exist"),
    (_step(gpu_flavor="h100"), r"steps\[fit\].gpu_flavor: flavor 'h100' is not in the queue configuration"),
    (_step(resources=Resources(gpu=500)), r"steps\[fit\]: gpu: 0.5 GPU needs a shareable or MIG flavor"),
    (_step(priority_class="high"), r"steps\[fit\].priority_class: a priority class needs a queue"),
    (_step(retries=-1), r"steps\[fit\].retries: must not be negative"),
    (_step(completions=0), r"steps\[fit\].completions: an indexed Job needs at least one completion"),
])
def test_bad_steps_name_the_field(step: StepJob, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_step_job(step, JobOptions(queue_config=QUEUES))


def test_missing_dependency_and_cycle_are_refused() -> None:
    with pytest.raises(InvalidParameterValue, match="depends on 'ghost'"):
        render_pipeline_jobs([_step(depends_on=("ghost",))])
    with pytest.raises(InvalidParameterValue, match="cycle"):
        render_pipeline_jobs([_step(node="a", depends_on=("b",)), _step(node="b", depends_on=("a",))])


def test_job_names_are_dns_labels_and_distinct() -> None:
    assert job_name("etl", "clean") == "etl-clean"
    long = job_name("p" * 40, "step_" + "x" * 40)
    assert len(long) <= 63 and long == long.lower() and "_" not in long
    assert job_name("etl", "a_b") != job_name("etl", "a-b")


@cp.step
def _produce() -> list[int]:
    return [1, 2, 3]


@cp.step
def _consume(x: int) -> int:
    return x


@cp.pipeline
def _dynamic() -> Any:
    return _consume.map(_produce())


def test_map_over_upstream_output_needs_a_count() -> None:
    graph = _dynamic.build()
    with pytest.raises(InvalidParameterValue, match=r"steps\[_consume\]: a map over another step's output"):
        step_jobs(graph, "t.py:_dynamic")
    (mapped,) = [s for s in step_jobs(graph, "t.py:_dynamic", {"_consume": 3}) if s.completions]
    assert (mapped.completions, mapped.depends_on) == (3, ("_produce",))


def test_schedule_becomes_cron_job(k8s_crds_dir: Path) -> None:
    cron = render_cron_job(CronSchedule("nightly", "etl.py:etl", "0 3 * * *", {"rows": "2000"}),
                           JobOptions(project="team-a"))
    assert validate_documents([cron], crds=load_crds([k8s_crds_dir])) == []
    spec = cron["spec"]
    assert (spec["schedule"], spec["concurrencyPolicy"], spec["startingDeadlineSeconds"]) == \
        ("0 3 * * *", "Forbid", 300)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["command"] == ["capstan", "run", "etl.py:etl", "--param", "rows=2000"]
    assert restricted_violations(pod) == []
    with pytest.raises(InvalidParameterValue, match=r"schedules\[bad\].cron"):
        render_cron_job(CronSchedule("bad", "etl.py:etl", "* * *"))


# --- capstan k8s render pipeline ---------------------------------------------------------------------------------

def _k8s_group() -> click.Group:
    """The ``capstan k8s`` group with the render parts, as `capstan.cli.k8s_cmds` assembles it."""
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_pipeline.register(group)
    return group


def test_render_pipeline_cli_writes_valid_jobs(tmp_path: Path, k8s_crds_dir: Path) -> None:
    out = tmp_path / "manifests"
    etl = str(ROOT / "examples" / "pipelines" / "etl.py")
    result = CliRunner().invoke(_k8s_group(), [
        "render", "pipeline", etl, "-o", str(out), "--param", "shards=3", "--project", "team-a",
        "--image", "acme/etl:2", "--env-from-secret", "capstan-store", "--ttl", "600"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert result.output.strip() == f"wrote {len(docs)} Job(s) to {out}" and len(docs) == 7
    assert validate_documents(docs, crds=load_crds([k8s_crds_dir])) == []
    clean = yaml.safe_load((out / "job-team-a-etl-clean.yaml").read_text(encoding="utf-8"))
    assert clean["spec"]["completions"] == 3 and clean["spec"]["ttlSecondsAfterFinished"] == 600
    container = clean["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "acme/etl:2" and container["envFrom"] == [{"secretRef": {"name": "capstan-store"}}]
    assert container["command"][-6:-2] == ["--node", "clean", "--param", "shards=3"]
    assert container["command"][4] == f"{etl}:etl"
    # every step of one rendering reports to one new run; another rendering gets another
    runs = {d["spec"]["template"]["spec"]["containers"][0]["command"][-1] for d in docs}
    assert len(runs) == 1 and container["command"][-2] == "--run" and runs.pop().startswith("etl-")


def test_render_pipeline_run_id_and_shipped_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_HOME", str(tmp_path / "home"))
    for name in ("CAPSTAN_URL", "CAPSTAN_DB_URL", "CAPSTAN_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"), "-o", str(out), "--run-id", "nightly.1",
        "--ship-code"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    command = yaml.safe_load((out / "job-default-etl-clean.yaml").read_text(encoding="utf-8"))[
        "spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[4] == "etl.py:etl"  # the reference inside the package, not the local path
    assert command[command.index("--run") + 1] == "nightly.1"
    code = command[command.index("--code") + 1]
    assert code.startswith("sha256:") and len(code) == 7 + 64
    argo = tmp_path / "argo"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"), "-o", str(argo), "--format", "argo"],
        catch_exceptions=False)
    assert result.exit_code == 0 and "'{{workflow.uid}}'" in (argo / "workflow-default-etl.yaml").read_text("utf-8")


@pytest.mark.parametrize(("args", "message"), [
    (["--count", "x"], "--count: 'x' is not STEP=N"),
    (["--param", "shards"], "--param: expected KEY=VALUE"),
    (["--project", "Team_A"], "project: 'Team_A' is not a valid Kubernetes namespace name"),
    (["--run-id", "a b"], "--run-id: 'a b' is not a run id"),
])
def test_render_pipeline_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"),
                                          "-o", str(tmp_path / "out"), *args], catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
