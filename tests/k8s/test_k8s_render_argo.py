"""Pipelines as one Argo Workflow: every example pipeline renders with ``--format argo`` and validates strictly
against the Argo Workflows CRD in ``../shared/k8s/crds`` (schema-only, no API server, no Argo controller); the
templates carry the native Jobs' pods (restricted), the DAG's dependencies, fan-outs, retries and timeouts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_pipeline
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import CrdSet, load_crds
from capstan.k8s.labels import QUEUE_NAME_LABEL
from capstan.k8s.pipeline_jobs import step_jobs
from capstan.k8s.pods import ClaimMount, restricted_violations
from capstan.k8s.render_argo import CHUNK_PARAM, ENTRYPOINT, RETRY_EXPRESSION, ArgoOptions, render_workflow
from capstan.k8s.render_pipelines import JobOptions, StepJob, render_pipeline_jobs
from capstan.k8s.validate import validate_documents
from capstan.pipelines.dsl import Pipeline
from capstan.pipelines.loader import import_pipeline_module

ROOT = Path(__file__).parents[2]
EXAMPLE_FILES = sorted(p for p in (ROOT / "examples" / "pipelines").glob("*.py")
                       if "pipeline" in p.read_text(encoding="utf-8").split('"""', 2)[-1])


@pytest.fixture(scope="module")
def crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir / "argo-workflows"])


def _examples() -> list[tuple[str, Pipeline]]:
    found = []
    for file in EXAMPLE_FILES:
        module, _ = import_pipeline_module(str(file))
        found += [(f"{file.name}:{name}", obj) for name, obj in vars(module).items() if isinstance(obj, Pipeline)]
    return found


def _workflow(objects: list[dict[str, Any]]) -> dict[str, Any]:
    assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding", "Secret", "Workflow"]
    return objects[-1]


def _templates(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in workflow["spec"]["templates"]}


def _pod_spec(template: dict[str, Any]) -> dict[str, Any]:
    """The pod spec Argo builds from a container template (its main container and pod-level fields)."""
    pod: dict[str, Any] = {k: template[k] for k in ("securityContext", "volumes", "affinity", "tolerations")
                           if k in template}
    return {**pod, "containers": [{"name": "main", **template["container"]}]}


def test_every_example_renders_a_valid_restricted_workflow(crds: CrdSet) -> None:
    examples = _examples()
    assert len(examples) >= 2
    for ref, pipe in examples:
        steps = step_jobs(pipe.build(), ref)
        objects = render_workflow(steps, JobOptions(project="team-a",
                                                    claims=(ClaimMount("raw", "/data/raw"),)))
        assert validate_documents(objects, crds=crds) == [], ref
        workflow = _workflow(objects)
        templates = _templates(workflow)
        tasks = templates[ENTRYPOINT]["dag"]["tasks"]
        assert len(tasks) == len(steps)
        for name, template in templates.items():
            if "container" in template:
                assert restricted_violations(_pod_spec(template)) == [], name
        assert workflow["spec"]["automountServiceAccountToken"] is False


def test_etl_dag_fan_out_retries_and_timeout(crds: CrdSet) -> None:
    (pipe,) = [p for ref, p in _examples() if ref.startswith("etl.py")]
    steps = step_jobs(pipe.build(), "etl.py:etl")
    native = {j["metadata"]["name"]: j for j in render_pipeline_jobs(steps)}
    workflow = _workflow(render_workflow(steps))
    templates = _templates(workflow)
    tasks = {t["name"]: t for t in templates[ENTRYPOINT]["dag"]["tasks"]}
    assert tasks["etl-split"]["dependencies"] == ["etl-transform", "etl-label"]
    assert "dependencies" not in tasks["etl-gather"]
    # same image, command, resources and security as the native Job's pod
    for name, job in native.items():
        container = dict(job["spec"]["template"]["spec"]["containers"][0])
        del container["name"]
        env = [e for e in container.pop("env", []) if e["name"] != "CHUNK_INDEX"]
        argo = dict(templates[name]["container"])
        assert [e for e in argo.pop("env", []) if e["name"] != "CHUNK_INDEX"] == env
        assert argo == container
    # an unbounded fan-out: withSequence on the task, CHUNK_INDEX from the item
    clean = tasks["etl-clean"]
    assert clean["withSequence"] == {"count": "4"} and clean["template"] == "etl-clean"
    assert clean["arguments"]["parameters"] == [{"name": CHUNK_PARAM, "value": "{{item}}"}]
    clean_env = {e["name"]: e for e in templates["etl-clean"]["container"]["env"]}
    assert clean_env["CHUNK_INDEX"] == {"name": "CHUNK_INDEX", "value": "{{inputs.parameters.chunk-index}}"}
    assert clean_env["CHUNK_COUNT"]["value"] == "4"
    # a bounded fan-out (max_parallel=2): a DAG template of its own with parallelism
    shard = next(t for n, t in tasks.items() if n.startswith("etl-profile-shard-"))
    wrapper = templates[shard["template"]]
    assert wrapper["parallelism"] == 2
    (inner,) = wrapper["dag"]["tasks"]
    assert inner["withSequence"] == {"count": "4"} and inner["template"] == shard["name"]
    gather = templates["etl-gather"]
    assert gather["retryStrategy"] == {"limit": 2, "retryPolicy": "Always", "expression": RETRY_EXPRESSION}
    assert gather["activeDeadlineSeconds"] == 60
    assert workflow["spec"]["ttlStrategy"] == {"secondsAfterCompletion": 3600}
    assert workflow["spec"]["executor"] == {"serviceAccountName": "capstan-argo-executor"}


def _step(**kw: Any) -> StepJob:
    base: dict[str, Any] = {"pipeline": "train", "pipeline_ref": "p.py:train", "node": "fit", "step": "fit"}
    base.update(kw)
    return StepJob(**base)


def test_queue_labels_reach_the_pods_and_rbac_is_minimal(crds: CrdSet) -> None:
    objects = render_workflow([_step(queue="team"), _step(node="eval", step="eval", depends_on=("fit",))],
                              JobOptions(project="team-a"), ArgoOptions(executor_account="argo-exec"))
    assert validate_documents(objects, crds=crds) == []
    account, role, binding, token, workflow = objects
    assert token["metadata"]["name"] == "argo-exec.service-account-token" and "data" not in token
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": "argo-exec"}
    assert account["metadata"]["name"] == "argo-exec"
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                              "verbs": ["create", "patch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "argo-exec", "namespace": "team-a"}]
    fit = _templates(workflow)["train-fit"]
    assert fit["metadata"]["labels"][QUEUE_NAME_LABEL] == "team"
    assert "retryStrategy" not in fit and "suspend" not in workflow["spec"]


def test_crd_catches_a_broken_workflow(crds: CrdSet) -> None:
    objects = render_workflow([_step()])
    workflow = objects[-1]
    workflow["spec"]["templates"][1]["retryStrategy"] = {"limitt": 2}
    workflow["spec"]["templates"][0]["dag"]["tasks"][0]["dependencies"] = "train-fit"
    errors = validate_documents([workflow], crds=crds)
    assert len(errors) == 2, errors


@pytest.mark.parametrize(("steps", "message"), [
    ([], "steps: a Workflow needs at least one step"),
    ([_step(), _step(pipeline="other", node="x")], "steps: the steps belong to several pipelines"),
    ([_step(retries=-1)], r"steps\[fit\].retries: must not be negative"),
    ([_step(depends_on=("ghost",))], "depends on 'ghost'"),
])
def test_bad_pipelines_are_refused(steps: list[StepJob], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_workflow(steps)


def test_bad_executor_account_is_refused() -> None:
    with pytest.raises(InvalidParameterValue, match="executor_account: 'Argo_Exec'"):
        render_workflow([_step()], argo=ArgoOptions(executor_account="Argo_Exec"))


# --- capstan k8s render pipeline --format argo ----------------------------------------------------------------------

def _k8s_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_pipeline.register(group)
    return group


def test_cli_argo_format_writes_a_valid_workflow(tmp_path: Path, crds: CrdSet) -> None:
    out = tmp_path / "argo"
    etl = str(ROOT / "examples" / "pipelines" / "etl.py")
    result = CliRunner().invoke(_k8s_group(), [
        "render", "pipeline", etl, "-o", str(out), "--format", "argo", "--project", "team-a",
        "--dataset", "raw:/data/raw", "--dataset", "features:/data/features:rw"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert len(docs) == 5 and validate_documents(docs, crds=crds) == []
    workflow = next(d for d in docs if d["kind"] == "Workflow")
    gather = _templates(workflow)["etl-gather"]
    assert {"name": "claim-1", "persistentVolumeClaim": {"claimName": "features", "readOnly": False}} in \
        gather["volumes"]
    assert {"name": "claim-0", "mountPath": "/data/raw", "readOnly": True} in gather["container"]["volumeMounts"]


def test_cli_cron_adds_a_cron_job(tmp_path: Path, k8s_crds_dir: Path) -> None:
    out = tmp_path / "cron"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"), "-o", str(out),
        "--cron", "0 3 * * *", "--catchup"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    (cron,) = [d for d in docs if d["kind"] == "CronJob"]
    assert cron["spec"]["schedule"] == "0 3 * * *" and "startingDeadlineSeconds" not in cron["spec"]
    assert validate_documents(docs, crds=load_crds([k8s_crds_dir])) == []


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "argo", "--cron", "0 3 * * *"], "--cron: a scheduled Argo export would be a CronWorkflow"),
    (["--catchup"], "--catchup: only a schedule catches up"),
    (["--cron", "0 3 * *"], "--cron: '0 3 * *' is not a valid cron expression"),
    (["--dataset", "raw"], "--dataset: 'raw' is not NAME:/mount/path"),
    (["--dataset", "raw:/tmp/raw"], "--dataset: raw at /tmp/raw clashes with the mount at /tmp"),
    (["--dataset", "a:/data", "--dataset", "b:/data/b"], "--dataset: b at /data/b clashes"),
    (["--format", "argo", "--argo-executor-sa", "Bad_SA"], "executor_account: 'Bad_SA'"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"),
                                          "-o", str(tmp_path / "out"), *args], catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_unknown_format_exits_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(_k8s_group(), ["render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"),
                                               "-o", str(tmp_path / "out"), "--format", "airflow"])
    assert result.exit_code == 2
    assert "Invalid value for '--format': 'airflow' is not one of 'native', 'argo'" in result.output
    assert not (tmp_path / "out").exists()
