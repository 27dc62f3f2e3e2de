"""Pod templates: a built pod validates strictly inside a Job (official Kubernetes schema via kubernetes-validate, no
API server) and passes the Pod Security "restricted" rules; `restricted_violations` catches each rule broken."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import load_crds
from capstan.k8s.pods import (
    ClaimMount,
    Container,
    PodOptions,
    Resources,
    SecretEnv,
    pod_template,
    restricted_violations,
)
from capstan.k8s.render_queues import KueueOptions, MigProfile
from capstan.k8s.validate import validate_documents
from capstan.queue.model import GpuSharing, ResourceFlavor, Taint, Toleration

GiB = 2**30
A100 = ResourceFlavor("a100", node_labels={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
                      taints=(Taint("nvidia.com/gpu", "present", "NoSchedule"),),
                      tolerations=(Toleration("spot", "Exists", "", "NoExecute"),))
SHARED = ResourceFlavor("t4-shared", sharing=GpuSharing(4), gpus=2)


def _container(**kw: Any) -> Container:
    base: dict[str, Any] = {"name": "main", "image": "ghcr.io/acme/train:1.2", "command": ("python",),
                            "args": ("-m", "train"), "env": {"EPOCHS": "3"},
                            "secret_env": (SecretEnv("HF_TOKEN", "hf", "token"),), "env_from_secrets": ("s3",),
                            "resources": Resources(cpu=1500, memory=8 * GiB, gpu=2000)}
    base.update(kw)
    return Container(**base)


def _job(template: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "team-a"},
            "spec": {"template": template}}


def test_default_pod_is_restricted_and_validates_strictly(k8s_crds_dir: Path) -> None:
    template = pod_template(_container(), PodOptions(flavor=A100, shm_bytes=2 * GiB,
                                                     claims=(ClaimMount("data", "/data"),)))
    assert validate_documents([_job(template)], crds=load_crds([k8s_crds_dir])) == []
    assert restricted_violations(template["spec"]) == []
    spec = template["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                                       "fsGroup": 1000, "seccompProfile": {"type": "RuntimeDefault"}}
    (c,) = spec["containers"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in spec["volumes"]
    assert {"name": "claim-0", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}} in spec["volumes"]


def test_resources_env_and_secrets_by_reference() -> None:
    c = pod_template(_container())["spec"]["containers"][0]
    assert c["resources"] == {"requests": {"cpu": "1500m", "memory": "8Gi"},
                              "limits": {"memory": "8Gi", "nvidia.com/gpu": "2"}}
    assert c["env"] == [{"name": "EPOCHS", "value": "3"},
                        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}]
    assert c["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert (c["image"], c["command"], c["args"]) == ("ghcr.io/acme/train:1.2", ["python"], ["-m", "train"])


def test_fractional_gpu_maps_to_shared_or_mig_resource() -> None:
    frac = _container(resources=Resources(cpu=1000, gpu=250))
    shared = pod_template(frac, PodOptions(flavor=SHARED))["spec"]["containers"][0]["resources"]
    assert shared["limits"] == {"nvidia.com/gpu.shared": "1"}
    mig = PodOptions(flavor=SHARED, kueue=KueueOptions(mig={"t4-shared": MigProfile("1g.10gb", 7)}))
    assert pod_template(frac, mig)["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/mig-1g.10gb": "2"}
    with pytest.raises(InvalidParameterValue, match=r"gpu: 0\.25 GPU needs a shareable or MIG flavor"):
        pod_template(frac)
    with pytest.raises(InvalidParameterValue, match=r"gpu: .*a100 has whole GPUs only"):
        pod_template(frac, PodOptions(flavor=A100))


def test_flavor_gives_affinity_and_tolerations() -> None:
    spec = pod_template(_container(), PodOptions(flavor=A100))["spec"]
    terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}]}]
    assert spec["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute"}]
    assert "affinity" not in pod_template(_container())["spec"]


def test_token_and_service_account_only_when_asked() -> None:
    spec = pod_template(_container(), PodOptions(service_account="runner", automount_token=True))["spec"]
    assert (spec["serviceAccountName"], spec["automountServiceAccountToken"]) == ("runner", True)


@pytest.mark.parametrize(("change", "message"), [
    ({"image": " "}, "image: must not be empty"),
    ({"name": "Main"}, "container.name: 'Main' is not a valid container name"),
    ({"env": {"1BAD": "x"}}, "env: '1BAD' is not a valid environment variable name"),
    ({"secret_env": (SecretEnv("EPOCHS", "s", "k"),)}, "env: 'EPOCHS' is set twice"),
    ({"resources": Resources(cpu=-1)}, "resources: cpu, memory and gpu must not be negative"),
])
def test_bad_container_input_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        pod_template(_container(**change))


def test_root_user_is_refused() -> None:
    with pytest.raises(InvalidParameterValue, match="run_as_user: a restricted pod runs as a non-zero user id"):
        pod_template(_container(), PodOptions(run_as_user=0))


def _ctx(spec: dict[str, Any]) -> dict[str, Any]:
    ctx: dict[str, Any] = spec["containers"][0]["securityContext"]
    return ctx


Mutation = Callable[[dict[str, Any]], object]
RULES: list[tuple[str, Mutation, str]] = [
    ("hostNetwork", lambda s: s.update(hostNetwork=True), "spec.hostNetwork: must not be true"),
    ("hostPID", lambda s: s.update(hostPID=True), "spec.hostPID: must not be true"),
    ("privileged", lambda s: _ctx(s).update(privileged=True), "privileged: must not be true"),
    ("escalation", lambda s: _ctx(s).pop("allowPrivilegeEscalation"), "allowPrivilegeEscalation: must be false"),
    ("drop", lambda s: _ctx(s).update(capabilities={"drop": ["NET_RAW"]}), "capabilities.drop: must include ALL"),
    ("add", lambda s: _ctx(s)["capabilities"].update(add=["SYS_ADMIN"]), "SYS_ADMIN is not allowed"),
    ("nonroot", lambda s: (s["securityContext"].pop("runAsNonRoot"), _ctx(s).pop("runAsNonRoot")),
     "containers[0].securityContext.runAsNonRoot: must be true"),
    ("uid0", lambda s: _ctx(s).update(runAsUser=0), "containers[0].securityContext.runAsUser: must not be 0"),
    ("seccomp", lambda s: (s["securityContext"].pop("seccompProfile"), _ctx(s).update(
        seccompProfile={"type": "Unconfined"})), "seccompProfile.type: must be RuntimeDefault or Localhost"),
    ("hostPath", lambda s: s["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
     "spec.volumes[1]: volume type hostPath is not allowed"),
    ("hostPort", lambda s: s["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
     "ports[0].hostPort: must not be set"),
    ("selinux", lambda s: _ctx(s).update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions.type: 'spc_t'"),
    ("apparmor", lambda s: _ctx(s).update(appArmorProfile={"type": "Unconfined"}), "appArmorProfile.type"),
    ("procMount", lambda s: _ctx(s).update(procMount="Unmasked"), "procMount: must be Default"),
    ("sysctl", lambda s: s["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]),
     "'kernel.msgmax' is not a safe sysctl"),
    ("readonly", lambda s: _ctx(s).update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem: must be true"),
    ("init", lambda s: s.update(initContainers=[{"name": "i", "image": "x"}]),
     "spec.initContainers[0].securityContext.allowPrivilegeEscalation: must be false"),
]


@pytest.mark.parametrize(("rule", "mutate", "expected"), RULES, ids=[r[0] for r in RULES])
def test_violations_catch_each_rule(rule: str, mutate: Mutation, expected: str) -> None:
    spec = copy.deepcopy(pod_template(_container())["spec"])
    mutate(spec)
    found = restricted_violations(spec)
    assert any(expected in line for line in found), found


def test_read_only_root_is_capstans_rule_and_can_be_left_out() -> None:
    spec = copy.deepcopy(pod_template(_container())["spec"])
    _ctx(spec)["readOnlyRootFilesystem"] = False
    assert restricted_violations(spec, read_only_root=False) == []
