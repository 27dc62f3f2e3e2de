"""Datasets as PersistentVolumeClaims, and ``--dataset`` mounts: claims validate strictly (official schema only, no
API server), access modes and data sources map, and bad sizes, accesses and mount texts are one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_dataset, k8s_render_job, k8s_render_pipeline
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import load_crds
from capstan.k8s.pods import ClaimMount, Container, PodOptions, pod_template, restricted_violations
from capstan.k8s.render_datasets import Dataset, check_mounts, parse_mount, render_dataset
from capstan.k8s.validate import validate_documents


@pytest.mark.parametrize(("dataset", "spec"), [
    (Dataset("imagenet", 100 * 2**30, project="vision", storage_class="nfs"),
     {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "100Gi"}}, "storageClassName": "nfs"}),
    (Dataset("imagenet-ro", 2**40, access="read-only-many", from_snapshot="imagenet-v1"),
     {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Ti"}},
      "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "imagenet-v1"}}),
    (Dataset("copy", 10**9, access="read-only-many", from_claim="imagenet"),
     {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1000000000"}},
      "dataSource": {"kind": "PersistentVolumeClaim", "name": "imagenet"}}),
    (Dataset("nfs-data", 2**30, access="read-only-many", volume="nfs-export"),
     {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "1Gi"}}, "volumeName": "nfs-export"}),
    (Dataset("state", 2**30, access="read-write-once"),
     {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}),
])
def test_claims_validate_and_map(dataset: Dataset, spec: dict[str, object]) -> None:
    claim = render_dataset(dataset)
    assert validate_documents([claim]) == []
    assert claim["spec"] == spec
    assert claim["metadata"]["labels"]["capstan.dev/dataset"] == dataset.name


@pytest.mark.parametrize(("dataset", "message"), [
    (Dataset("Bad_Name", 1), "dataset.name: 'Bad_Name' is not a valid name"),
    (Dataset("d", 0), "dataset.size: must be more than 0 bytes"),
    (Dataset("d", 1, access="read-only-many"), "dataset.access: a read-only-many claim needs its data"),
    (Dataset("d", 1, from_claim="a", volume="b"), "dataset: give one data source, not from_claim and volume"),
    (Dataset("d", 1, project="Team"), "project: 'Team' is not a valid Kubernetes namespace name"),
])
def test_bad_datasets_name_the_field(dataset: Dataset, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_dataset(dataset)


def test_mounts_parse_and_reach_the_pod() -> None:
    assert parse_mount("imagenet:/data/imagenet") == ClaimMount("imagenet", "/data/imagenet", read_only=True)
    assert parse_mount("out:/data/out/:rw") == ClaimMount("out", "/data/out", read_only=False)
    mounts = check_mounts([parse_mount("imagenet:/data/imagenet"), parse_mount("out:/out:rw")])
    template = pod_template(Container("main", "img:1"), PodOptions(claims=mounts))
    assert validate_documents([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                                "spec": template["spec"]}]) == []
    assert restricted_violations(template["spec"]) == []


@pytest.mark.parametrize(("text", "message"), [
    ("imagenet", "is not NAME:/mount/path"), ("imagenet:data", "is not NAME:/mount/path"),
    ("imagenet:/data:rx", "is not NAME:/mount/path"), ("Imagenet:/data", "'Imagenet' is not a valid name"),
    ("imagenet:/", "is not a mount point"), ("imagenet:/data/../etc", "is not a mount point"),
])
def test_bad_mount_texts(text: str, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        parse_mount(text)


def _k8s_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_dataset.register(group)
    return group


def test_cli_writes_a_valid_claim(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = CliRunner().invoke(_k8s_group(), ["render", "dataset", "imagenet", "--size", "100Gi", "-o", str(out),
                                               "--storage-class", "nfs", "--project", "vision"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (path,) = out.iterdir()
    claim = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert path.name == "persistentvolumeclaim-vision-imagenet.yaml"
    assert validate_documents([claim]) == []
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"


@pytest.mark.parametrize(("args", "message"), [
    (["--size", "10Xi"], "--size: '10Xi' is not a quantity"),
    (["--size", "-1Gi"], "--size: quantity '-1Gi' must not be negative"),
    (["--size", "0"], "dataset.size: must be more than 0 bytes"),
    (["--size", "1Gi", "--access", "read-only-many"], "dataset.access: a read-only-many claim needs its data"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "dataset", "imagenet", "-o", str(tmp_path / "out"), *args],
                           catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_unknown_access_exits_non_zero(tmp_path: Path) -> None:
    result = CliRunner().invoke(_k8s_group(), ["render", "dataset", "d", "--size", "1Gi", "--access", "rwx",
                                               "-o", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Invalid value for '--access'" in result.output


# --- --dataset on the pipeline and job renderers ------------------------------------------------------------------

ROOT = Path(__file__).parents[2]


def _render_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_pipeline.register(group)
    k8s_render_job.register(group)
    return group


def _docs(out: Path) -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "Job":
        return [obj["spec"]["template"]["spec"]]
    if obj["kind"] == "PyTorchJob":
        return [r["template"]["spec"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    if obj["kind"] == "TrainJob":
        patch = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
        return [patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]]
    return []


MOUNTS = ["--dataset", "imagenet:/data/imagenet", "--dataset", "ckpt:/ckpt:rw"]
CLAIMS = [{"name": "claim-0", "persistentVolumeClaim": {"claimName": "imagenet", "readOnly": True}},
          {"name": "claim-1", "persistentVolumeClaim": {"claimName": "ckpt", "readOnly": False}}]


def test_pipeline_steps_mount_datasets(tmp_path: Path, k8s_crds_dir: Path) -> None:
    out = tmp_path / "native"
    result = CliRunner().invoke(_render_group(), ["render", "pipeline", str(ROOT / "examples" / "pipelines" / "etl.py"),
                                                  "-o", str(out), *MOUNTS], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = _docs(out)
    assert validate_documents(docs, crds=load_crds([k8s_crds_dir])) == []
    for doc in docs:
        (pod,) = _pod_specs(doc)
        assert pod["volumes"][-2:] == CLAIMS and restricted_violations(pod) == []
        assert {"name": "claim-1", "mountPath": "/ckpt", "readOnly": False} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize("fmt", ["native", "pytorchjob", "trainjob"])
def test_training_jobs_mount_datasets(tmp_path: Path, k8s_crds_dir: Path, fmt: str) -> None:
    out = tmp_path / fmt
    result = CliRunner().invoke(_render_group(), ["render", "job", "train.py", "-o", str(out), "--image", "acme/t:1",
                                                  "--workers", "2", "--format", fmt, *MOUNTS], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = _docs(out)
    assert validate_documents(docs, crds=load_crds([k8s_crds_dir])) == []
    pods = [pod for doc in docs for pod in _pod_specs(doc)]
    assert pods
    for pod in pods:
        assert [v for v in pod["volumes"] if "persistentVolumeClaim" in v] == CLAIMS
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "claim-0", "mountPath": "/data/imagenet", "readOnly": True} in mounts


def test_training_job_refuses_clashing_mounts(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="--dataset: b at /data clashes with the mount at /data"):
        CliRunner().invoke(_render_group(), ["render", "job", "train.py", "-o", str(tmp_path / "o"), "--image", "i",
                                             "--dataset", "a:/data", "--dataset", "b:/data"], catch_exceptions=False)
