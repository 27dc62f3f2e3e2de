"""``capstan.k8s.validate`` and ``capstan k8s validate``: strict checks of built-in kinds against the official
schemas (kubernetes-validate), of custom resources against the real CRDs in ``../shared/k8s/crds`` (structural
schema plus CEL rules), every error listed with its field path. Schema-only: no API server is involved."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import CrdSet, crd_set_from_documents, load_crds
from capstan.k8s.validate import ValidationError, check_documents, format_path, validate_documents

POD_SPEC: dict[str, Any] = {
    "restartPolicy": "Never",
    "containers": [{"name": "main", "image": "python:3.11-slim", "command": ["python", "-c", "print(1)"],
                    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
}
JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train", "namespace": "team-a"},
    "spec": {"completionMode": "Indexed", "completions": 4, "parallelism": 2, "backoffLimit": 3,
             "template": {"metadata": {"labels": {"app.kubernetes.io/name": "train"}}, "spec": POD_SPEC}},
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "serve"},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "serve"}},
             "template": {"metadata": {"labels": {"app": "serve"}},
                          "spec": {"containers": [{"name": "srv", "image": "capstan:1",
                                                   "ports": [{"containerPort": 8080}]}]}}},
}
SERVICE: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "serve"},
    "spec": {"selector": {"app": "serve"}, "ports": [{"port": 80, "targetPort": "http"}]},
}
NETWORK_POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "default-deny"},
    "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
}
CRON_JOB: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
    "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": POD_SPEC}}}},
}
CLUSTER_QUEUE: dict[str, Any] = {
    "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": "gpu"},
    "spec": {"namespaceSelector": {},
             "resourceGroups": [{"coveredResources": ["cpu", "nvidia.com/gpu"],
                                 "flavors": [{"name": "a100", "resources": [
                                     {"name": "cpu", "nominalQuota": 32},
                                     {"name": "nvidia.com/gpu", "nominalQuota": "8"}]}]}]},
}
LOCAL_QUEUE: dict[str, Any] = {
    "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue", "metadata": {"name": "team", "namespace": "a"},
    "spec": {"clusterQueue": "gpu"},
}
WORKFLOW: dict[str, Any] = {
    "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": {"generateName": "pipe-"},
    "spec": {"entrypoint": "main", "templates": [
        {"name": "main", "dag": {"tasks": [{"name": "a", "template": "step"},
                                           {"name": "b", "template": "step", "dependencies": ["a"]}]}},
        {"name": "step", "container": {"image": "python:3.11-slim", "command": ["python", "-c", "print(2)"]}}]},
}
PYTORCH_JOB: dict[str, Any] = {
    "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "ddp"},
    "spec": {"pytorchReplicaSpecs": {
        "Master": {"replicas": 1, "restartPolicy": "OnFailure",
                   "template": {"spec": {"containers": [{"name": "pytorch", "image": "trainer:1"}]}}},
        "Worker": {"replicas": 3, "restartPolicy": "OnFailure",
                   "template": {"spec": {"containers": [{"name": "pytorch", "image": "trainer:1",
                                                         "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}}}},
}
TRAIN_JOB: dict[str, Any] = {
    "apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "tj"},
    "spec": {"runtimeRef": {"name": "torch-distributed"}, "trainer": {"numNodes": 2}},
}
BUILT_IN = [JOB, DEPLOYMENT, SERVICE, NETWORK_POLICY, CRON_JOB]
CUSTOM = [CLUSTER_QUEUE, LOCAL_QUEUE, WORKFLOW, PYTORCH_JOB, TRAIN_JOB]


@pytest.fixture(scope="module")
def crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir])


def _edited(doc: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def _pairs(errors: list[ValidationError]) -> list[tuple[int, str]]:
    return [(e.index, e.path) for e in errors]


def test_built_in_kinds_pass() -> None:
    assert validate_documents(BUILT_IN) == []


def test_custom_resources_pass(crds: CrdSet) -> None:
    report = check_documents(CUSTOM, crds=crds)
    assert report.errors == []
    assert report.warnings == []
    assert report.schema_version == "1.33"


def test_unknown_field_is_reported_at_its_path() -> None:
    typo = _edited(JOB, ["spec", "template", "spec", "containers", 0, "imagee"], "x")
    assert validate_documents([typo]) == [
        ValidationError(0, "Job", "train", "spec.template.spec.containers[0].imagee", "unknown field")]


def test_wrong_type_and_missing_required_field() -> None:
    wrong = _edited(DEPLOYMENT, ["spec", "replicas"], "two")
    missing = copy.deepcopy(SERVICE)
    del missing["spec"]["ports"][0]["port"]
    errors = validate_documents([wrong, missing])
    assert _pairs(errors) == [(0, "spec.replicas"), (1, "spec.ports[0].port")]
    assert errors[0].message == 'wrong type: expected integer, got string ("two")'
    assert errors[1].message == "required field is missing"


def test_every_error_is_listed_not_only_the_first(crds: CrdSet) -> None:
    job = copy.deepcopy(JOB)
    job["spec"]["backoffLimit"] = "3"
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    job["spec"]["template"]["spec"]["restartPolise"] = "Never"
    job["metadata"]["lables"] = {}
    queue = _edited(LOCAL_QUEUE, ["spec", "clusterQueu"], "gpu")
    errors = validate_documents([SERVICE, job, queue], crds=crds)
    assert _pairs(errors) == [
        (1, "metadata.lables"), (1, "spec.backoffLimit"),
        (1, "spec.template.spec.containers[0].imagePullPolicy"), (1, "spec.template.spec.restartPolise"),
        (2, "spec.clusterQueu")]


def test_unknown_kind_without_crd_is_an_error(crds: CrdSet) -> None:
    errors = validate_documents([CLUSTER_QUEUE])
    assert [(e.kind, e.path) for e in errors] == [("ClusterQueue", "")]
    assert "unknown kind ClusterQueue in kueue.x-k8s.io/v1beta2" in errors[0].message
    # A sub-object's schema (affinity-v1.json ships too) is not a kind, nor is a known kind in a made-up group.
    fake = [{"apiVersion": "v1", "kind": "Affinity", "metadata": {"name": "x"}},
            {"apiVersion": "batch.example.com/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {}},
            {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueues", "metadata": {"name": "x"}}]
    errors = validate_documents(fake, crds=crds)
    assert [e.index for e in errors] == [0, 1, 2]
    assert "CRDs loaded for kueue.x-k8s.io/v1beta2 serve" in errors[2].message


def test_custom_resource_unknown_field_and_wrong_type(crds: CrdSet) -> None:
    bad = copy.deepcopy(PYTORCH_JOB)
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "three"
    bad["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    bad["metadata"]["labelz"] = {}
    errors = validate_documents([bad], crds=crds)
    assert _pairs(errors) == [
        (0, "metadata.labelz"), (0, "spec.pytorchReplicaSpecs.Worker.replicas"),
        (0, "spec.pytorchReplicaSpecs.Worker.template.spec.containers[0].imagee")]


def test_cel_rule_violation_in_cluster_queue(crds: CrdSet) -> None:
    # Kueue: each flavor lists exactly as many resources as the group covers.
    bad = copy.deepcopy(CLUSTER_QUEUE)
    bad["spec"]["resourceGroups"][0]["flavors"][0]["resources"].pop()
    errors = validate_documents([bad], crds=crds)
    assert _pairs(errors) == [(0, "spec.resourceGroups[0]")]
    assert errors[0].message == "flavors must have the same number of resources as the coveredResources"


def test_cel_rule_sees_schema_defaults_and_catches_violation(crds: CrdSet) -> None:
    # TrainJob's managedBy has a default that passes its rule; an explicit other value breaks it.
    assert validate_documents([TRAIN_JOB], crds=crds) == []
    bad = _edited(TRAIN_JOB, ["spec", "managedBy"], "someone-else")
    errors = validate_documents([bad], crds=crds)
    assert _pairs(errors) == [(0, "spec.managedBy")]
    assert errors[0].message.startswith("ManagedBy must be trainer.kubeflow.org/trainjob-controller")


def _crd(schema: dict[str, Any]) -> CrdSet:
    return crd_set_from_documents([{
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "names": {"kind": "Widget"}, "scope": "Namespaced",
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": schema}},
                              {"name": "v0", "served": False, "storage": False}]}}])


def _widget(spec: dict[str, Any], version: str = "v1") -> dict[str, Any]:
    return {"apiVersion": f"example.com/{version}", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_structural_schema_keywords() -> None:
    crds = _crd({"type": "object", "properties": {"spec": {"type": "object", "properties": {
        "port": {"x-kubernetes-int-or-string": True},
        "note": {"type": "string", "nullable": True},
        "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "size": {"type": "string", "enum": ["s", "m"]}}}}})
    good = _widget({"port": "http", "note": None, "free": {"anything": [1]}, "labels": {"a.b/c": "d"}, "size": "s"})
    assert validate_documents([good, _widget({"port": 80})], crds=crds) == []
    bad = _widget({"port": 1.5, "labels": {"a.b/c": 3}, "size": "xl", "extra": 1})
    errors = validate_documents([bad, _widget({}, version="v0")], crds=crds)
    assert _pairs(errors) == [(0, "spec.extra"), (0, 'spec.labels["a.b/c"]'), (0, "spec.port"), (0, "spec.size"),
                              (1, "")]


def test_cel_rules_not_evaluable_become_warnings_and_transition_rules_are_skipped() -> None:
    crds = _crd({"type": "object", "properties": {"spec": {
        "type": "object", "properties": {"q": {"type": "string"}},
        "x-kubernetes-validations": [
            {"rule": "isQuantity(self.q)", "message": "q must be a quantity"},
            {"rule": "self.q == oldSelf.q", "message": "immutable"},
            {"rule": "self.q.startsWith('x')", "messageExpression": "'q is ' + self.q", "fieldPath": ".q"}]}}})
    report = check_documents([_widget({"q": "1Gi"})], crds=crds)
    assert [(e.path, e.message) for e in report.errors] == [("spec.q", "q is 1Gi")]
    assert len(report.warnings) == 1
    assert report.warnings[0].path == "spec"
    assert "isQuantity" in report.warnings[0].message


def test_metadata_name_is_required_and_non_mappings_are_errors() -> None:
    nameless = copy.deepcopy(SERVICE)
    del nameless["metadata"]
    errors = validate_documents([nameless, ["not", "a", "manifest"], {"kind": "Job"}])
    assert _pairs(errors) == [(0, "metadata.name"), (1, ""), (2, "apiVersion")]


def test_version_selection_and_bad_versions() -> None:
    assert check_documents([SERVICE], k8s_version="v1.30.4").schema_version == "1.30"
    for version in ("1.99", "nonsense", "1.2"):
        with pytest.raises(InvalidParameterValue, match="--k8s-version"):
            validate_documents([SERVICE], k8s_version=version)


def test_format_path() -> None:
    assert format_path(["spec", "containers", 0, "image"]) == "spec.containers[0].image"
    assert format_path([0, "a"]) == "[0].a"


def _cli(*args: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    code = f"{prelude}\nimport sys\nfrom capstan.cli.main import main\nmain(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "k8s", "validate", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_valid_folder(tmp_path: Path, k8s_crds_dir: Path) -> None:
    (tmp_path / "built-in.yaml").write_text(yaml.safe_dump_all(BUILT_IN))
    (tmp_path / "custom.yml").write_text(yaml.safe_dump_all(CUSTOM))
    (tmp_path / "notes.txt").write_text("not a manifest")
    proc = _cli(str(tmp_path), "--crds", str(k8s_crds_dir / "kueue"), "--crds", str(k8s_crds_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: 10 document(s) in 2 file(s) valid against the Kubernetes 1.33 schemas")
    assert proc.stderr == ""


def test_cli_lists_every_error_one_line_each(tmp_path: Path, k8s_crds_dir: Path) -> None:
    bad_queue = copy.deepcopy(CLUSTER_QUEUE)
    bad_queue["spec"]["resourceGroups"][0]["flavors"][0]["resources"].pop()
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([SERVICE, _edited(JOB, ["spec", "parallelism"], "2")]))
    (tmp_path / "b.json").write_text(json.dumps(bad_queue))
    proc = _cli(str(tmp_path), "--crds", str(k8s_crds_dir), "--k8s-version", "1.33")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f'{tmp_path / "a.yaml"}#2 Job/train: spec.parallelism: wrong type: expected integer, got string ("2")',
        f"{tmp_path / 'b.json'} ClusterQueue/gpu: spec.resourceGroups[0]: "
        "flavors must have the same number of resources as the coveredResources"]
    assert proc.stderr.startswith("2 error(s) in 2 of 3 document(s)")


@pytest.mark.parametrize(("setup", "args", "message"), [
    ("missing", [], "no such file or folder"),
    ("bad-yaml", [], "not valid YAML"),
    ("empty", [], "no *.yaml, *.yml or *.json manifests found"),
    ("ok", ["--crds", "/nonexistent-crds"], "--crds /nonexistent-crds: no such folder"),
    ("ok", ["--k8s-version", "9.1"], "--k8s-version 9.1: the installed kubernetes-validate has schemas"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, setup: str, args: list[str], message: str) -> None:
    target = tmp_path / "manifests"
    if setup != "missing":
        target.mkdir()
    if setup == "bad-yaml":
        (target / "x.yaml").write_text("kind: [unclosed\n")
    if setup == "ok":
        (target / "svc.yaml").write_text(yaml.safe_dump(SERVICE))
    proc = _cli(str(target), *args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("error: ") and message in proc.stderr


def test_cli_without_kubernetes_validate_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(yaml.safe_dump(SERVICE))
    proc = _cli(str(tmp_path), prelude="import sys\nsys.modules['kubernetes_validate'] = None")
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("error: k8s validate needs kubernetes-validate, which is not installed: "
                                   "pip install 'capstan[k8s]'")


def test_rendered_queues_with_a_provisioning_check_pass_the_shared_validator(k8s_crds_dir: Path) -> None:
    """The AdmissionCheck CRD's name pattern uses RE2's mid-pattern ``(?i)``, which Python's ``re`` refuses as
    written: the validator translates it (`capstan.k8s.crds.python_pattern`) instead of crashing."""
    from capstan.k8s.crds import load_crds, python_pattern
    from capstan.k8s.render_queues import KueueOptions, ProvisioningCheck, render_queues
    from capstan.queue.config import load_config

    assert python_pattern("^(?i)[a-z]+$") == "^(?i:[a-z]+$)"
    config = load_config(Path(__file__).resolve().parents[2] / "examples" / "queues" / "teams.yaml")
    check = ProvisioningCheck(managed_resources=("nvidia.com/gpu",), on_flavors=("a100",))
    docs = render_queues(config, KueueOptions(provisioning={"team-a": check}))
    assert any(d["kind"] == "AdmissionCheck" for d in docs)
    assert validate_documents(docs, crds=load_crds([k8s_crds_dir / "kueue"])) == []
