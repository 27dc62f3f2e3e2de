"""The Kueue renderer: every object validates strictly against the Kueue CRDs (v1beta2 openAPIV3Schema with
unknown fields rejected, plus the CRDs' CEL rules), and each Capstan queue setting lands in the right Kueue field.

Validation here is schema-only (no API server): jsonschema over the CRD's schema, made strict, and cel-python for
``x-kubernetes-validations`` (transition rules that read ``oldSelf`` only apply to updates and are skipped).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import click
import jsonschema  # type: ignore[import-untyped, unused-ignore]  # no stubs unless types-jsonschema is in
import pytest
import yaml
from celpy.adapter import json_to_cel
from click.testing import CliRunner

from capstan.cli import k8s_render
from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL, workload_labels
from capstan.k8s.render_queues import (
    API_VERSION,
    KueueOptions,
    MigProfile,
    ProvisioningCheck,
    gpu_request,
    quantity,
    render_queues,
)
from capstan.queue.config import load_config, parse_config
from capstan.queue.model import QueueConfig

ROOT = Path(__file__).parents[2]
CRDS = ROOT.parent / "shared" / "k8s" / "crds" / "kueue"
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))
QUEUE_EXAMPLES = [p for p in EXAMPLES if "clusterQueues" in p.read_text(encoding="utf-8")]

pytestmark = pytest.mark.skipif(not CRDS.is_dir(), reason=f"the Kueue CRDs are not at {CRDS}")


# --- strict validation against the CRDs (private to this file) -------------------------------------------------

def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that neither preserves unknown fields nor
    declares its own additional properties (the API server's pruning turned into errors), and Go's mid-pattern
    ``(?i)`` moved to the front for Python's re."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and "(?i)" in pattern:  # Go's RE2 takes the flag mid-pattern; Python does not
            out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def _schemas() -> dict[str, Any]:
    """Kind -> the served v1beta2 openAPIV3Schema."""
    found = {}
    for path in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        for version in crd["spec"]["versions"]:
            if version["name"] == "v1beta2" and version.get("served"):
                found[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return found


def _cel_errors(schema: Any, value: Any, path: str) -> Iterator[str]:
    if not isinstance(schema, dict):
        return
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": json_to_cel(value)}):
            yield f"{path}: {rule.get('message', rule['rule'])}"
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _cel_errors(schema.get("properties", {}).get(key), item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _cel_errors(schema.get("items"), item, f"{path}[{i}]")


def _errors(doc: dict[str, Any]) -> list[str]:
    """Every problem with one rendered object (empty when it is valid)."""
    if doc.get("apiVersion") != API_VERSION:
        return [f"apiVersion {doc.get('apiVersion')!r}"]
    schema = _schemas().get(doc.get("kind", ""))
    if schema is None:
        return [f"no CRD for kind {doc.get('kind')!r}"]
    problems = [f"metadata.{k}: unknown field" for k in doc["metadata"] if k not in ("name", "namespace", "labels")]
    validator = jsonschema.Draft7Validator(_strict(schema))
    problems += [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]
    if not problems:
        problems += list(_cel_errors(schema, doc, doc["kind"]))
    return problems


def _assert_valid(docs: list[dict[str, Any]]) -> None:
    problems = {f"{d['kind']}/{d['metadata']['name']}": _errors(d) for d in docs}
    assert {k: v for k, v in problems.items() if v} == {}


def _by(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _config(text: str) -> QueueConfig:
    return parse_config(yaml.safe_load(text))


# --- the validator itself catches what it should -----------------------------------------------------------------

def test_validator_rejects_typos_wrong_types_and_cel_violations() -> None:
    docs = render_queues(load_config(ROOT / "examples" / "queues" / "teams.yaml"))
    cq = copy.deepcopy(_by(docs, "ClusterQueue", "team-a"))
    cq["spec"]["queueingStrategie"] = "StrictFIFO"
    assert any("queueingStrategie" in e for e in _errors(cq))
    cq = copy.deepcopy(_by(docs, "ClusterQueue", "team-a"))
    cq["spec"]["preemption"]["withinClusterQueue"] = "Any"
    assert any("withinClusterQueue" in e for e in _errors(cq))
    cq = copy.deepcopy(_by(docs, "ClusterQueue", "team-a"))
    cq["spec"]["resourceGroups"][1]["flavors"][0]["resources"].pop()
    assert _errors(cq) == ["ClusterQueue.spec.resourceGroups[1]: flavors must have the same number of resources "
                           "as the coveredResources"]
    cq = copy.deepcopy(_by(docs, "ClusterQueue", "team-a"))
    del cq["spec"]["cohortName"]
    assert _errors(cq) == ["ClusterQueue.spec: borrowingLimit must be nil when cohort is empty"]
    wpc = copy.deepcopy(_by(docs, "WorkloadPriorityClass", "low"))
    wpc["value"] = "high"
    assert any("value" in e for e in _errors(wpc))


# --- examples -----------------------------------------------------------------------------------------------------

def test_examples_hold_queue_configs() -> None:
    assert {p.name for p in QUEUE_EXAMPLES} >= {"teams.yaml", "itp-cluster.yaml"}


@pytest.mark.parametrize("path", QUEUE_EXAMPLES, ids=lambda p: p.name)
def test_every_example_queue_config_renders_and_validates(path: Path) -> None:
    config = load_config(path)
    docs = render_queues(config)
    _assert_valid(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds.count("ClusterQueue") == len(config.cluster_queues)
    assert kinds.count("LocalQueue") == len(config.local_queues)
    assert kinds.count("ResourceFlavor") == len(config.flavors)
    assert kinds.count("Cohort") == len(config.cohorts)
    assert kinds.count("WorkloadPriorityClass") == len(config.priority_classes)


def test_teams_example_maps_every_field() -> None:
    docs = render_queues(load_config(ROOT / "examples" / "queues" / "teams.yaml"))
    a100 = _by(docs, "ResourceFlavor", "a100")["spec"]
    assert a100 == {"nodeLabels": {"gpu": "a100"},
                    "nodeTaints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
                    "tolerations": [{"operator": "Exists", "key": "nvidia.com/gpu"}]}
    team_a = _by(docs, "ClusterQueue", "team-a")["spec"]
    assert team_a["cohortName"] == "research"
    assert team_a["preemption"] == {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Any",
                                    "borrowWithinCohort": {"policy": "LowerPriority", "maxPriorityThreshold": 0}}
    assert team_a["flavorFungibility"] == {"whenCanBorrow": "TryNextFlavor", "whenCanPreempt": "TryNextFlavor"}
    assert team_a["namespaceSelector"]["matchExpressions"][0]["values"] == ["default", "nlp"]
    cpu_group, gpu_group = team_a["resourceGroups"]
    assert cpu_group["flavors"][0]["resources"] == [{"name": "cpu", "nominalQuota": "64"},
                                                    {"name": "memory", "nominalQuota": "256Gi"}]
    # whole A100s and MPS-shared quarters are different Kubernetes resources in one group
    assert gpu_group["coveredResources"] == ["nvidia.com/gpu", "nvidia.com/gpu.shared"]
    assert gpu_group["flavors"] == [
        {"name": "a100", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "8", "borrowingLimit": "4"},
                                       {"name": "nvidia.com/gpu.shared", "nominalQuota": "0"}]},
        {"name": "a100-shared", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "0"},
                                              {"name": "nvidia.com/gpu.shared", "nominalQuota": "4"}]}]
    team_b = _by(docs, "ClusterQueue", "team-b")["spec"]
    assert team_b["resourceGroups"][1]["flavors"][0]["resources"][0] == {
        "name": "nvidia.com/gpu", "nominalQuota": "6", "lendingLimit": "4"}
    assert "borrowWithinCohort" not in team_b["preemption"]
    production = _by(docs, "ClusterQueue", "production")["spec"]
    assert production["queueingStrategy"] == "StrictFIFO" and "cohortName" not in production
    nlp = _by(docs, "LocalQueue", "nlp")
    assert nlp["metadata"]["namespace"] == "nlp" and nlp["spec"] == {"clusterQueue": "team-a"}
    assert _by(docs, "WorkloadPriorityClass", "urgent")["value"] == 1000


# --- cohorts, borrowing, fair sharing, stop policies -------------------------------------------------------------

COHORT_TREE = """
flavors: [{name: gpu-pool}]
cohorts:
  - name: org
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: gpu-pool, resources: [{name: gpu, nominalQuota: 16}]}]
  - name: research
    parent: org
    fairSharing: {weight: 2}
    resourceGroups:
      - coveredResources: [gpu]
        flavors: [{name: gpu-pool, resources: [{name: gpu, nominalQuota: 8, borrowingLimit: 4, lendingLimit: 2}]}]
clusterQueues:
  - name: alpha
    cohort: research
    fairSharing: {weight: 0.5}
    stopPolicy: Hold
    flavorFungibility: {whenCanBorrow: Borrow, whenCanPreempt: Preempt}
    preemption: {withinClusterQueue: LowerOrNewerEqualPriority, reclaimWithinCohort: LowerPriority}
    resourceGroups:
      - coveredResources: [cpu, gpu]
        flavors:
          - name: gpu-pool
            resources: [{name: cpu, nominalQuota: 1500m, borrowingLimit: 500m}, {name: gpu, nominalQuota: 4}]
localQueues:
  - {name: alpha, clusterQueue: alpha, project: alpha, stopPolicy: HoldAndDrain}
fairSharing: {enable: true}
"""


def test_cohort_tree_with_borrowing_and_fair_sharing() -> None:
    docs = render_queues(_config(COHORT_TREE))
    _assert_valid(docs)
    assert _by(docs, "Cohort", "org")["spec"] == {"resourceGroups": [
        {"coveredResources": ["nvidia.com/gpu"],
         "flavors": [{"name": "gpu-pool", "resources": [{"name": "nvidia.com/gpu", "nominalQuota": "16"}]}]}]}
    research = _by(docs, "Cohort", "research")["spec"]
    assert research["parentName"] == "org" and research["fairSharing"] == {"weight": "2"}
    assert research["resourceGroups"][0]["flavors"][0]["resources"] == [
        {"name": "nvidia.com/gpu", "nominalQuota": "8", "borrowingLimit": "4", "lendingLimit": "2"}]
    alpha = _by(docs, "ClusterQueue", "alpha")["spec"]
    assert alpha["fairSharing"] == {"weight": "0.5"}
    assert alpha["stopPolicy"] == "Hold"
    assert alpha["flavorFungibility"] == {"whenCanBorrow": "MayStopSearch", "whenCanPreempt": "MayStopSearch"}
    assert alpha["preemption"] == {"withinClusterQueue": "LowerOrNewerEqualPriority",
                                   "reclaimWithinCohort": "LowerPriority"}
    assert alpha["resourceGroups"][0]["flavors"][0]["resources"] == [
        {"name": "cpu", "nominalQuota": "1500m", "borrowingLimit": "500m"},
        {"name": "nvidia.com/gpu", "nominalQuota": "4"}]
    assert _by(docs, "LocalQueue", "alpha")["spec"] == {"clusterQueue": "alpha", "stopPolicy": "Hold"}


def test_borrow_within_cohort_without_reclaim_is_refused_with_the_field() -> None:
    config = _config(COHORT_TREE.replace("reclaimWithinCohort: LowerPriority}",
                                         "borrowWithinCohort: {policy: LowerPriority}}"))
    with pytest.raises(InvalidParameterValue, match=r"^clusterQueues\[alpha\]\.preemption\.borrowWithinCohort: "):
        render_queues(config)


# --- fractional GPUs: time-sliced and MIG ----------------------------------------------------------------------

SHARED = """
flavors:
  - name: t4-sliced
    gpus: 4
    nodeLabels: {nvidia.com/gpu.product: Tesla-T4}
    sharing: {slotsPerGpu: 4, strategy: time-slicing}
  - name: a100-mig
    gpus: 8
    sharing: {slotsPerGpu: 7}
clusterQueues:
  - name: inference
    resourceGroups:
      - coveredResources: [gpu]
        flavors:
          - name: t4-sliced
            resources: [{name: gpu, nominalQuota: 2.5}]
          - name: a100-mig
            resources: [{name: gpu, nominalQuota: 8}]
localQueues: [{name: serve, clusterQueue: inference, project: serving}]
"""


def test_time_sliced_gpus_become_shared_slots() -> None:
    config = _config(SHARED)
    docs = render_queues(config)
    _assert_valid(docs)
    group = _by(docs, "ClusterQueue", "inference")["spec"]["resourceGroups"][0]
    assert group["coveredResources"] == ["nvidia.com/gpu.shared"]  # both flavors are shareable
    # 2.5 GPUs x 4 slots = 10 slots; 8 GPUs x 7 = 56
    assert [f["resources"][0]["nominalQuota"] for f in group["flavors"]] == ["10", "56"]
    t4 = config.flavors[0]
    assert gpu_request(t4, 250, KueueOptions()) == ("nvidia.com/gpu.shared", 1)
    assert gpu_request(t4, 300, KueueOptions()) == ("nvidia.com/gpu.shared", 2)  # rounded up to whole slots
    custom = KueueOptions(shared_gpu_resource="nvidia.com/gpu.timesliced")
    assert render_queues(config, custom)[-2]["spec"]["resourceGroups"][0]["coveredResources"] == [
        "nvidia.com/gpu.timesliced"]


def test_mig_flavors_become_mig_instances() -> None:
    config = _config(SHARED)
    options = KueueOptions(mig={"a100-mig": MigProfile("1g.10gb", 7)})
    docs = render_queues(config, options)
    _assert_valid(docs)
    group = _by(docs, "ClusterQueue", "inference")["spec"]["resourceGroups"][0]
    assert group["coveredResources"] == ["nvidia.com/gpu.shared", "nvidia.com/mig-1g.10gb"]
    assert group["flavors"][1] == {"name": "a100-mig", "resources": [
        {"name": "nvidia.com/gpu.shared", "nominalQuota": "0"},
        {"name": "nvidia.com/mig-1g.10gb", "nominalQuota": "56"}]}
    mig = config.flavors[1]
    assert gpu_request(mig, 1000 // 7, options) == ("nvidia.com/mig-1g.10gb", 1)
    assert gpu_request(mig, 500, options) == ("nvidia.com/mig-1g.10gb", 4)
    with pytest.raises(InvalidParameterValue, match=r"^mig\[a100-mig\]\.profile: "):
        render_queues(config, KueueOptions(mig={"a100-mig": MigProfile("one-tenth", 7)}))
    with pytest.raises(InvalidParameterValue, match=r"^mig\[nope\]: flavor 'nope' does not exist"):
        render_queues(config, KueueOptions(mig={"nope": MigProfile("1g.10gb", 7)}))


def test_a_fraction_on_a_whole_gpu_flavor_is_refused() -> None:
    config = load_config(ROOT / "examples" / "queues" / "teams.yaml")
    a100 = next(f for f in config.flavors if f.name == "a100")
    assert gpu_request(a100, 2000, KueueOptions()) == ("nvidia.com/gpu", 2)
    with pytest.raises(InvalidParameterValue, match="needs a shareable or MIG flavor"):
        gpu_request(a100, 500, KueueOptions())


def test_quantities_are_exact() -> None:
    assert quantity(500, "cpu") == "500m"
    assert quantity(64_000, "cpu") == "64"
    assert quantity(256 * 2**30 * 1000, "memory") == "256Gi"
    assert quantity(1536 * 2**20 * 1000, "memory") == "1536Mi"
    assert quantity(1000 * 1000, "memory") == "1000"
    assert quantity(0, "memory") == "0"


# --- provisioning requests -----------------------------------------------------------------------------------------

def test_provisioning_request_admission_check() -> None:
    config = load_config(ROOT / "examples" / "queues" / "teams.yaml")
    check = ProvisioningCheck(managed_resources=("nvidia.com/gpu",), on_flavors=("a100",),
                              parameters={"ValidUntilSeconds": "3600"})
    docs = render_queues(config, KueueOptions(provisioning={"team-a": check}))
    _assert_valid(docs)
    prc = _by(docs, "ProvisioningRequestConfig", "team-a-provisioning")["spec"]
    assert prc == {"provisioningClassName": "check-capacity.autoscaling.x-k8s.io",
                   "managedResources": ["nvidia.com/gpu"], "parameters": {"ValidUntilSeconds": "3600"}}
    ac = _by(docs, "AdmissionCheck", "team-a-provisioning")["spec"]
    assert ac == {"controllerName": "kueue.x-k8s.io/provisioning-request",
                  "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "ProvisioningRequestConfig",
                                 "name": "team-a-provisioning"}}
    assert _by(docs, "ClusterQueue", "team-a")["spec"]["admissionChecksStrategy"] == {
        "admissionChecks": [{"name": "team-a-provisioning", "onFlavors": ["a100"]}]}
    assert "admissionChecksStrategy" not in _by(docs, "ClusterQueue", "team-b")["spec"]
    kinds = [d["kind"] for d in docs]
    assert kinds.index("AdmissionCheck") < kinds.index("ClusterQueue")
    with pytest.raises(InvalidParameterValue, match=r"^provisioning\[nobody\]: ClusterQueue 'nobody'"):
        render_queues(config, KueueOptions(provisioning={"nobody": check}))


# --- names and labels --------------------------------------------------------------------------------------------

def test_names_kubernetes_cannot_take_are_refused_with_the_field() -> None:
    config = _config("flavors: [{name: cpu}]\nclusterQueues: [{name: Team_A, resourceGroups: []}]\n")
    with pytest.raises(InvalidParameterValue, match=r"^clusterQueues\[Team_A\]: 'Team_A' is not a valid"):
        render_queues(config)
    config = _config("clusterQueues: [{name: a, resourceGroups: []}]\n"
                     "localQueues: [{name: q, clusterQueue: a, project: My_Project}]\n")
    with pytest.raises(InvalidParameterValue, match=r"^localQueues\[q\]\.project: 'My_Project' is not a valid "
                                                    "Kubernetes namespace"):
        render_queues(config)
    config = _config("flavors: [{name: f, tolerations: [{value: x}]}]\n")
    with pytest.raises(InvalidParameterValue, match=r"^flavors\[f\]\.tolerations\[0\]: a toleration without a key"):
        render_queues(config)


def test_workload_labels() -> None:
    config = load_config(ROOT / "examples" / "queues" / "teams.yaml")
    assert workload_labels(config, "nlp") == {QUEUE_NAME_LABEL: "nlp", PRIORITY_CLASS_LABEL: "normal"}
    assert workload_labels(config, "vision", "urgent") == {QUEUE_NAME_LABEL: "vision", PRIORITY_CLASS_LABEL: "urgent"}
    bare = _config("clusterQueues: [{name: a, resourceGroups: []}]\nlocalQueues: [{name: q, clusterQueue: a}]\n")
    assert workload_labels(bare, "q") == {QUEUE_NAME_LABEL: "q"}
    with pytest.raises(InvalidParameterValue, match="LocalQueue 'nope' does not exist"):
        workload_labels(config, "nope")
    with pytest.raises(InvalidParameterValue, match="priority class 'top' does not exist"):
        workload_labels(config, "nlp", "top")


# --- capstan k8s render queues -----------------------------------------------------------------------------------

def _k8s_group() -> click.Group:
    """The ``capstan k8s`` group with only the render part, as `capstan.cli.k8s_cmds` assembles it."""
    group = click.Group("k8s")
    k8s_render.register(group)
    return group


def test_render_queues_cli_writes_one_valid_file_per_object(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "queues", str(ROOT / "examples" / "queues" / "teams.yaml"), "-o", str(out),
        "--mig", "a100-shared=1g.10gb:7", "--provisioning", "team-a"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in out.iterdir())
    assert "clusterqueue-team-a.yaml" in files and "localqueue-nlp-nlp.yaml" in files
    assert "admissioncheck-team-a-provisioning.yaml" in files
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert result.output.strip() == f"wrote {len(docs)} Kueue object(s) to {out}"
    _assert_valid(docs)
    team_a = next(d for d in docs if d["kind"] == "ClusterQueue" and d["metadata"]["name"] == "team-a")
    assert team_a["spec"]["resourceGroups"][1]["coveredResources"] == ["nvidia.com/gpu", "nvidia.com/mig-1g.10gb"]


@pytest.mark.parametrize(("args", "message"), [
    (["--mig", "a100"], "--mig: 'a100' is not FLAVOR=PROFILE:PER_GPU"),
    (["--provisioning", "nobody"], "provisioning[nobody]: ClusterQueue 'nobody' does not exist"),
])
def test_render_queues_cli_bad_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "queues", str(ROOT / "examples" / "queues" / "teams.yaml"),
                                          "-o", str(tmp_path), *args], catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_render_queues_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "queues.yaml"
    bad.write_text("clusterQueues: [{name: a, cohort: nowhere, resourceGroups: []}]\n", encoding="utf-8")
    with pytest.raises(InvalidParameterValue, match=r"^clusterQueues\[0\]\.cohort: cohort 'nowhere' does not exist"):
        CliRunner().invoke(_k8s_group(), ["render", "queues", str(bad), "-o", str(tmp_path / "out")],
                           catch_exceptions=False)
    assert not (tmp_path / "out").exists()
