"""Partial admission in the training renderer: ``min_workers`` becomes Kueue's ``job-min-parallelism`` on the
indexed Job, with torchrun's elastic rendezvous so the pods Kueue admits agree on WORLD_SIZE. Schema-only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_job
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import CrdSet, load_crds
from capstan.k8s.pods import restricted_violations
from capstan.k8s.render_training import (
    COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION,
    MIN_PARALLELISM_ANNOTATION,
    TrainingRenderOptions,
    render_training,
)
from capstan.k8s.validate import validate_documents
from capstan.training.spec import TrainingJobSpec, parse_job_spec


@pytest.fixture(scope="module")
def crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir / "kubeflow-training-operator", k8s_crds_dir / "kubeflow-trainer"])


def _spec(**fields: Any) -> TrainingJobSpec:
    data = {"name": "resnet", "entry": "train.py", "image": "ghcr.io/acme/train:1", "workers": 4, "min_workers": 2,
            "cpu": 4, "gpus": 1, "args": ["--epochs", "3"], "queue": "team-a"}
    data.update(fields)
    return parse_job_spec(data)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def test_min_workers_sets_kueues_partial_admission_annotations_and_elastic_torchrun(crds: CrdSet) -> None:
    service, job = render_training(_spec(nproc_per_worker=2), TrainingRenderOptions(master_port=29400))
    assert validate_documents([service, job], crds=crds) == []
    assert job["metadata"]["annotations"] == {MIN_PARALLELISM_ANNOTATION: "2",
                                              COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION: "true"}
    assert MIN_PARALLELISM_ANNOTATION == "kueue.x-k8s.io/job-min-parallelism"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (4, 4)  # Kueue lowers both on admission
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    container = pod["containers"][0]
    assert container["command"] == [
        "torchrun", "--nnodes=2:4", "--nproc-per-node=2", "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)", "--rdzv-id=$(TORCHELASTIC_RUN_ID)", "train.py",
        "--epochs", "3"]
    env = _env(container)
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["TORCHELASTIC_RUN_ID"]) == ("resnet-0.resnet", "29400",
                                                                                    "resnet")
    assert env["CAPSTAN_JOB_WORKERS_REQUESTED"] == "4"
    for fixed in ("WORLD_SIZE", "GROUP_WORLD_SIZE", "RANK", "GROUP_RANK", "LOCAL_RANK"):
        assert fixed not in env  # torchrun's rendezvous sets them from the pods that came


def test_without_min_workers_nothing_changes() -> None:
    _, job = render_training(_spec(min_workers=None))
    assert "annotations" not in job["metadata"]
    env = _env(job["spec"]["template"]["spec"]["containers"][0])
    assert env["WORLD_SIZE"] == "4" and "CAPSTAN_JOB_WORKERS_REQUESTED" not in env


@pytest.mark.parametrize("fmt", ["pytorchjob", "trainjob"])
def test_other_formats_refuse_min_workers_naming_the_field(fmt: Any) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^job\.min_workers: partial admission is rendered for the "
                                                    r"native format only"):
        render_training(_spec(), TrainingRenderOptions(format=fmt))


def _k8s_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_job.register(group)
    return group


def test_render_job_cli_min_workers(tmp_path: Path, crds: CrdSet) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "job", "train.py", "-o", str(out), "--image", "ghcr.io/acme/train:1", "--workers", "8",
        "--min-workers", "3", "--queue", "team-a"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert validate_documents(docs, crds=crds) == []
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["metadata"]["annotations"][MIN_PARALLELISM_ANNOTATION] == "3"
    with pytest.raises(InvalidParameterValue) as info:
        CliRunner().invoke(_k8s_group(), ["render", "job", "train.py", "-o", str(tmp_path), "--image", "i",
                                          "--workers", "2", "--min-workers", "3"], catch_exceptions=False)
    assert str(info.value) == "--min-workers: must be between 1 and 2, got 3"
    with pytest.raises(InvalidParameterValue, match=r"^--min-workers: partial admission"):
        CliRunner().invoke(_k8s_group(), ["render", "job", "train.py", "-o", str(tmp_path), "--image", "i",
                                          "--workers", "2", "--min-workers", "1", "--format", "pytorchjob"],
                           catch_exceptions=False)
