"""The training renderer: each format validates strictly (official schemas, the Kubeflow CRDs with their CEL rules),
every pod passes the restricted profile, and ranks, rendezvous, GPUs, flavor placement and queue labels map.

Schema-only: nothing here talks to an API server.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_job
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import CrdSet, load_crds
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL
from capstan.k8s.pods import restricted_violations
from capstan.k8s.render_training import (
    COMPLETION_INDEX_FIELD,
    FORMATS,
    TrainingFormat,
    TrainingRenderOptions,
    render_training,
    trainjob_pod,
)
from capstan.k8s.validate import validate_documents
from capstan.queue.config import parse_config
from capstan.queue.model import ResourceFlavor, Taint
from capstan.training.spec import TrainingJobSpec, parse_job_spec


@pytest.fixture(scope="module")
def crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir / "kubeflow-training-operator", k8s_crds_dir / "kubeflow-trainer"])


def _spec(**fields: Any) -> TrainingJobSpec:
    data = {"name": "resnet", "entry": "train.py", "image": "ghcr.io/acme/train:1", "workers": 3, "cpu": 4,
            "memory": "16Gi", "gpus": 2, "gpu_flavor": "a100", "max_restarts": 2, "args": ["--epochs", "3"]}
    data.update(fields)
    return parse_job_spec(data)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return []


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("fields", [{}, {"workers": 1, "nproc_per_worker": 4, "entry": "pkg.train"},
                                    {"gpus": 0, "gpu_flavor": None, "max_restarts": 0, "queue": "team-a"}])
def test_every_format_validates_strictly_and_is_restricted(fmt: TrainingFormat, fields: dict[str, Any],
                                                           crds: CrdSet) -> None:
    objects = render_training(_spec(**fields), TrainingRenderOptions(format=fmt, namespace="vision"))
    assert validate_documents(objects, crds=crds) == []
    for obj in objects:
        for pod in _pod_specs(obj):
            assert restricted_violations(pod) == []
    assert restricted_violations(trainjob_pod(_spec(**fields), TrainingRenderOptions())["spec"]) == []


def test_native_indexed_job_and_headless_service() -> None:
    service, job = render_training(_spec(), TrainingRenderOptions(master_port=29400))
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "resnet"}
    assert service["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 3, 3, 2)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"] == "resnet"
    env = _env(pod["containers"][0])
    assert env["MASTER_ADDR"] == "resnet-0.resnet" and env["MASTER_PORT"] == "29400"
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["GROUP_WORLD_SIZE"], env["LOCAL_RANK"]) == \
        ("3", "1", "3", "0")
    for name in ("RANK", "GROUP_RANK"):
        assert env[name] == {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}
    assert pod["containers"][0]["command"] == ["python", "train.py", "--epochs", "3"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == 29400


def test_native_several_processes_per_pod_use_torchrun_static_rendezvous() -> None:
    _, job = render_training(_spec(workers=2, nproc_per_worker=8, entry="pkg.train"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = _env(container)
    assert (env["WORLD_SIZE"], env["LOCAL_WORLD_SIZE"], env["OMP_NUM_THREADS"]) == ("16", "8", "1")
    assert "RANK" not in env  # torchrun gives each process GROUP_RANK * 8 + LOCAL_RANK
    assert env["GROUP_RANK"] == {"fieldRef": {"fieldPath": COMPLETION_INDEX_FIELD}}
    assert container["command"] == ["torchrun", "--nnodes=$(GROUP_WORLD_SIZE)", "--node-rank=$(GROUP_RANK)",
                                    "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
                                    "--nproc-per-node=8", "--module", "pkg.train", "--epochs", "3"]


def test_gpus_shm_and_flavor_placement() -> None:
    options = TrainingRenderOptions(gpu_products={"a100": "NVIDIA-A100-SXM4-80GB"}, shm_bytes=2**30)
    _, job = render_training(_spec(), options)
    pod = job["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"memory": "16Gi", "nvidia.com/gpu": "2"}
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In",
                                            "values": ["NVIDIA-A100-SXM4-80GB"]}]}]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["emptyDir"].get("medium") == "Memory")
    assert shm["emptyDir"]["sizeLimit"] == "1Gi"
    assert {"name": shm["name"], "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


def test_a_declared_flavor_gives_its_labels_and_taints() -> None:
    flavor = ResourceFlavor("h100-spot", node_labels={"cloud.example/pool": "h100-spot"},
                            taints=(Taint("spot", "true", "NoSchedule"),))
    _, job = render_training(_spec(gpu_flavor="h100-spot"), TrainingRenderOptions(flavors={"h100-spot": flavor}))
    pod = job["spec"]["template"]["spec"]
    expr = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert expr["nodeSelectorTerms"][0]["matchExpressions"][0]["key"] == "cloud.example/pool"
    assert pod["tolerations"] == [{"key": "spot", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]


def test_pytorchjob_master_and_workers(crds: CrdSet) -> None:
    (job,) = render_training(_spec(workers=4), TrainingRenderOptions(format="pytorchjob"))
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 3)
    container = replicas["Worker"]["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch" and container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert not {"RANK", "MASTER_ADDR", "WORLD_SIZE"} & set(_env(container))  # the operator sets them
    assert job["spec"]["runPolicy"]["backoffLimit"] == 2
    (single,) = render_training(_spec(workers=1), TrainingRenderOptions(format="pytorchjob"))
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]


def test_trainjob_runtime_nodes_and_patch(crds: CrdSet) -> None:
    (job,) = render_training(_spec(nproc_per_worker=2),
                             TrainingRenderOptions(format="trainjob", runtime="torch-cuda-128"))
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert job["spec"]["runtimeRef"]["name"] == "torch-cuda-128"
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 2)
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    assert trainer["command"] == ["torchrun", "train.py", "--epochs", "3"]
    pod = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod_spec = pod["template"]["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert any(v["emptyDir"].get("medium") == "Memory" for v in pod_spec["volumes"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_queue_gives_kueue_labels(fmt: TrainingFormat) -> None:
    config = parse_config(yaml.safe_load("""
flavors: [{name: cpu}]
clusterQueues:
  - name: cq
    resourceGroups: [{coveredResources: [cpu], flavors: [{name: cpu, resources: [{name: cpu, nominalQuota: 8}]}]}]
localQueues: [{name: team-a, clusterQueue: cq, project: vision}]
priorityClasses: [{name: high, value: 100}]
"""))
    spec = _spec(queue="team-a", priority="high")
    objects = render_training(spec, TrainingRenderOptions(format=fmt, queue_config=config))
    workload = objects[-1]
    assert workload["metadata"]["labels"][QUEUE_NAME_LABEL] == "team-a"
    assert workload["metadata"]["labels"][PRIORITY_CLASS_LABEL] == "high"
    with pytest.raises(InvalidParameterValue, match="team-b"):
        render_training(_spec(queue="team-b"), TrainingRenderOptions(format=fmt, queue_config=config))
    unlabelled = render_training(_spec(), TrainingRenderOptions(format=fmt))[-1]
    assert QUEUE_NAME_LABEL not in unlabelled["metadata"]["labels"]


def test_bad_input_names_the_field() -> None:
    with pytest.raises(InvalidParameterValue, match=r"job\.image"):
        render_training(_spec(image=None))
    with pytest.raises(InvalidParameterValue, match="gpu"):
        render_training(_spec(gpus=0.5, gpu_flavor=None))
    with pytest.raises(InvalidParameterValue, match="namespace"):
        render_training(_spec(), TrainingRenderOptions(namespace="Not_OK"))


def test_validation_catches_a_broken_rendering(crds: CrdSet) -> None:
    (job,) = render_training(_spec(), TrainingRenderOptions(format="trainjob"))
    broken = copy.deepcopy(job)
    broken["spec"]["trainer"]["numNodes"] = "three"
    broken["spec"]["runtimeRef"]["nmae"] = "x"
    paths = {e.path for e in validate_documents([broken], crds=crds)}
    assert "spec.trainer.numNodes" in paths and "spec.runtimeRef.nmae" in paths
    (pt,) = render_training(_spec(), TrainingRenderOptions(format="pytorchjob"))
    pt["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    assert validate_documents([pt], crds=crds) != []


# --- capstan k8s render job ----------------------------------------------------------------------------------------

def _k8s_group() -> click.Group:
    """The ``capstan k8s`` group with the render parts, as `capstan.cli.k8s_cmds` assembles it."""
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_job.register(group)
    return group


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_job_cli_writes_valid_manifests(fmt: str, tmp_path: Path, crds: CrdSet) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "job", "train.py", "-o", str(out), "--format", fmt, "--image", "ghcr.io/acme/train:1",
        "--namespace", "vision", "--workers", "2", "--nproc-per-worker", "2", "--gpus", "1", "--gpu-flavor", "a100",
        "--gpu-product", "a100=NVIDIA-A100-SXM4-80GB", "--queue", "team-a", "--shm-size", "1Gi",
        "--env", "SEED=7", "--", "--epochs", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert result.output.strip() == f"wrote {len(docs)} object(s) to {out}"
    assert validate_documents(docs, crds=crds) == []
    workload = next(d for d in docs if d["kind"] != "Service")
    assert workload["metadata"]["name"] == "train" and workload["metadata"]["namespace"] == "vision"
    assert workload["metadata"]["labels"][QUEUE_NAME_LABEL] == "team-a"
    text = yaml.safe_dump(workload)
    assert "NVIDIA-A100-SXM4-80GB" in text and "--epochs" in text and "SEED" in text


def test_render_job_cli_bad_options_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "job", "train.py", "-o", str(tmp_path), "--image", "i",
                                          "--workers", "0"], catch_exceptions=False)
    assert str(info.value).startswith("--workers: must be between 1") and "\n" not in str(info.value)
    with pytest.raises(InvalidParameterValue, match=r"^--gpu-product: 'a100' is not FLAVOR=PRODUCT"):
        CliRunner().invoke(_k8s_group(), ["render", "job", "train.py", "-o", str(tmp_path), "--image", "i",
                                          "--gpu-product", "a100"], catch_exceptions=False)
    result = CliRunner().invoke(_k8s_group(), ["render", "job", "train.py", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "--image" in result.output
