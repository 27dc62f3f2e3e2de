"""The serving renderer: every example deployment spec renders in both formats and validates strictly (official
schemas, the KServe CRD with its CEL rules), every pod passes the restricted profile, and replicas, HPA metrics,
disruption budgets, the router's split and shadow, TLS and KServe's canary map from the spec.

Schema-only: nothing here talks to an API server (the router's own behaviour is tested in test_k8s_router.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_deployment
from capstan.cli.main import main
from capstan.errors import InvalidParameterValue
from capstan.k8s.crds import CrdSet, load_crds
from capstan.k8s.labels import QUEUE_NAME_LABEL
from capstan.k8s.pods import restricted_violations
from capstan.k8s.render_project import COMPONENT_LABEL, SERVING
from capstan.k8s.render_serving import (
    DEPLOYMENT_LABEL,
    FORMATS,
    KSERVE_SCRAPE,
    LIVE_PATH,
    READY_PATH,
    ROLE_LABEL,
    ServingFormat,
    ServingRenderOptions,
    ServingTls,
    kserve_pod,
    min_available,
    render_serving,
    storage_uri,
)
from capstan.k8s.validate import validate_documents
from capstan.queue.model import GpuSharing, ResourceFlavor
from capstan.serving.spec import DeploymentSpec, load_spec_yaml, parse_spec

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))
IMAGE = "ghcr.io/acme/capstan:0.1"


def _deployment_specs() -> list[Path]:
    """The example files that are deployment specs (a top-level ``model`` and ``name``)."""
    found = []
    for path in EXAMPLES:
        docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        if len(docs) == 1 and isinstance(docs[0], dict) and {"name", "model"} <= docs[0].keys() \
                and "apiVersion" not in docs[0]:
            found.append(path)
    return found


SPEC_FILES = _deployment_specs()


@pytest.fixture(scope="module")
def crds(k8s_crds_dir: Path) -> CrdSet:
    return load_crds([k8s_crds_dir / "kserve"])


def _spec(**fields: Any) -> DeploymentSpec:
    data: dict[str, Any] = {"name": "fraud", "model": "models:/fraud/6", "replicas": 3,
                            "resources": {"cpu": "500m", "memory": "1Gi"}}
    data.update(fields)
    return parse_spec({k: v for k, v in data.items() if v is not None})


def _options(fmt: ServingFormat = "native", **fields: Any) -> ServingRenderOptions:
    base: dict[str, Any] = {"format": fmt, "namespace": "fraud"}
    if fmt == "native":
        base["image"] = IMAGE
    base.update(fields)
    return ServingRenderOptions(**base)


def _kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pods(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: d["spec"]["template"]["spec"] for name, d in _kind(objects, "Deployment").items()}


def _command(pod: dict[str, Any]) -> list[str]:
    return list(pod["containers"][0]["command"])


def _after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _kserve_options(spec: DeploymentSpec) -> ServingRenderOptions:
    role = "canary" if spec.canary is not None else "primary"
    return _options("kserve", storage_uris={role: f"s3://models/{spec.name}/{role}"},
                    without_shadow=spec.shadow is not None)


def test_the_examples_hold_a_deployment_spec() -> None:
    assert REPO / "examples" / "serving" / "deployment.yaml" in SPEC_FILES


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_example_renders_in_both_formats_and_validates_strictly(path: Path, fmt: ServingFormat,
                                                                      crds: CrdSet) -> None:
    spec = load_spec_yaml(path.read_text(encoding="utf-8"), source=str(path))
    flavor = ResourceFlavor("shared", sharing=GpuSharing(4)) if spec.resources.shares_a_gpu else None
    if fmt == "native":
        options = _options(store_secret="capstan-store", tls=ServingTls("fraud-tls"), flavor=flavor)
    else:
        options = _kserve_options(spec)
    objects = render_serving(spec, options)
    assert validate_documents(objects, crds=crds) == []
    for name, pod in _pods(objects).items():
        assert restricted_violations(pod) == [], name
    for isvc in _kind(objects, "InferenceService").values():
        predictor = isvc["spec"]["predictor"]
        pod = {"securityContext": predictor["securityContext"], "containers": [predictor["model"]],
               "volumes": predictor["volumes"]}
        assert restricted_violations(pod) == []


@pytest.mark.parametrize("fields", [
    {},
    {"replicas": None, "autoscaling": {"min_replicas": 2, "max_replicas": 6, "target_rps": 2.5}},
    {"canary": {"model": "models:/fraud/7", "traffic": 25}, "shadow": {"model": "models:/fraud/8", "traffic": 50}},
    {"llm": {"backend": "vllm", "max_num_seqs": 16}, "replicas": None,
     "autoscaling": {"max_replicas": 4, "target_waiting": 8}, "resources": {"gpus": 1, "memory": "24Gi"}},
    {"batching": {"max_batch_size": 16, "max_delay_ms": 2}, "resources": {"gpus": 0.25, "queue": "serving"}},
])
def test_varied_specs_validate_and_are_restricted(fields: dict[str, Any], crds: CrdSet) -> None:
    flavor = ResourceFlavor("t4-shared", sharing=GpuSharing(4))
    objects = render_serving(_spec(**fields), _options(flavor=flavor))
    assert validate_documents(objects, crds=crds) == []
    assert all(restricted_violations(pod) == [] for pod in _pods(objects).values())


def test_a_fixed_count_renders_deployment_service_and_budget_without_router() -> None:
    objects = render_serving(_spec(), _options())
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Deployment", "fraud-primary"), ("Service", "fraud-primary"), ("PodDisruptionBudget", "fraud-primary"),
        ("Service", "fraud")]
    deployment = objects[0]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"] == {DEPLOYMENT_LABEL: "fraud", ROLE_LABEL: "primary"}
    pdb = objects[2]["spec"]
    assert pdb["minAvailable"] == 2 and pdb["selector"] == deployment["spec"]["selector"]
    front = objects[3]["spec"]
    assert front["selector"] == {DEPLOYMENT_LABEL: "fraud", ROLE_LABEL: "primary"}  # no router: straight to pods
    assert front["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]


def test_min_available_keeps_all_but_one_and_skips_single_replicas() -> None:
    assert [min_available(n) for n in (1, 2, 3, 10)] == [None, 1, 2, 9]
    assert not _kind(render_serving(_spec(replicas=1), _options()), "PodDisruptionBudget")


def test_pod_runs_capstan_serve_with_probes_resources_and_scrape_annotations() -> None:
    spec = _spec(batching={"max_batch_size": 32, "max_delay_ms": 5}, drift={"window": 500},
                 resources={"cpu": "2", "memory": "4Gi", "gpus": 1})
    template = _kind(render_serving(spec, _options(port=9000)), "Deployment")["fraud-primary"]["spec"]["template"]
    container = template["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert container["command"] == ["capstan", "serve", "models:/fraud/6", "--name", "fraud", "--host", "0.0.0.0",
                                    "--port", "9000", "--deployment", "fraud", "--project", "default",
                                    "--max-batch-size", "32", "--max-batch-delay-ms", "5", "--drift-window", "500"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"},
                                      "limits": {"memory": "4Gi", "nvidia.com/gpu": "1"}}
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http", "scheme": "HTTP"}
    assert container["livenessProbe"]["httpGet"]["path"] == LIVE_PATH
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    assert template["metadata"]["annotations"] == {"prometheus.io/scrape": "true", "prometheus.io/port": "9000",
                                                   "prometheus.io/path": "/metrics"}
    assert template["metadata"]["labels"][COMPONENT_LABEL] == SERVING  # the project's serving ingress rule


def test_pods_read_models_through_the_server_with_a_token_secret() -> None:
    pod = _pods(render_serving(_spec(), _options(server_url="https://capstan.example:8443")))["fraud-primary"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["CAPSTAN_URL"]["value"] == "https://capstan.example:8443"
    assert env["CAPSTAN_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "capstan-token", "key": "token"}}
    assert env["CAPSTAN_HOME"]["value"].startswith("/tmp/")  # the root filesystem is read-only
    assert "envFrom" not in pod["containers"][0]


def test_payload_logging_needs_direct_store_access() -> None:
    spec = _spec(payload_logging={"sample_rate": 0.1})
    with pytest.raises(InvalidParameterValue, match=r"^spec\.payload_logging: .*--store-secret"):
        render_serving(spec, _options())
    objects = render_serving(spec, _options(store_secret="capstan-store", store_ports=(5432, 9000)))
    container = _pods(objects)["fraud-primary"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "capstan-store"}}]
    assert "CAPSTAN_URL" not in {e["name"] for e in container["env"]}
    assert _after(container["command"], "--payload-sample-rate") == "0.1"
    egress = _kind(objects, "NetworkPolicy")["fraud-store-egress"]["spec"]
    assert egress["egress"] == [{"ports": [{"protocol": "TCP", "port": 5432}, {"protocol": "TCP", "port": 9000}]}]


def test_autoscaling_renders_an_hpa_on_cpu_and_the_pods_metric() -> None:
    spec = _spec(replicas=None, autoscaling={"min_replicas": 2, "max_replicas": 10, "target_concurrency": 4,
                                             "stabilization_window_seconds": 120})
    objects = render_serving(spec, _options(cpu_utilization=70))
    assert "replicas" not in _kind(objects, "Deployment")["fraud-primary"]["spec"]  # the HPA owns the count
    hpa = _kind(objects, "HorizontalPodAutoscaler")["fraud-primary"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-primary"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}},
        {"type": "Pods", "pods": {"metric": {"name": "inference_requests_in_flight"},
                                  "target": {"type": "AverageValue", "averageValue": "4"}}}]
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 120}}
    assert _kind(objects, "PodDisruptionBudget")["fraud-primary"]["spec"]["minAvailable"] == 1


@pytest.mark.parametrize(("fields", "metric", "target"), [
    ({"target_rps": 2.5}, "inference_requests_per_second", "2500m"),
    ({"target_waiting": 8}, "llm_requests_waiting", "8"),
    ({"target_tokens_per_second": 1500}, "llm_generation_tokens_per_second", "1500"),
])
def test_the_pods_metric_follows_the_spec_target(fields: dict[str, Any], metric: str, target: str) -> None:
    spec = _spec(replicas=None, resources=None, autoscaling={"max_replicas": 3, **fields})
    hpa = _kind(render_serving(spec, _options()), "HorizontalPodAutoscaler")["fraud-primary"]
    # No CPU request: utilisation would be undefined, so the Pods metric is the only one.
    assert hpa["spec"]["metrics"] == [{"type": "Pods", "pods": {
        "metric": {"name": metric}, "target": {"type": "AverageValue", "averageValue": target}}}]


def test_a_language_model_scales_on_its_engine_metrics() -> None:
    spec = _spec(llm={}, replicas=None, autoscaling={"max_replicas": 3, "target_concurrency": 6})
    hpa = _kind(render_serving(spec, _options()), "HorizontalPodAutoscaler")["fraud-primary"]
    assert hpa["spec"]["metrics"][-1]["pods"]["metric"]["name"] == "llm_requests_in_flight"


def test_scale_to_zero_keeps_one_replica_under_an_hpa() -> None:
    spec = _spec(replicas=None, autoscaling={"min_replicas": 0, "max_replicas": 4, "target_rps": 10})
    assert _kind(render_serving(spec, _options()), "HorizontalPodAutoscaler")["fraud-primary"]["spec"][
        "minReplicas"] == 1


def test_canary_and_shadow_go_through_the_capstan_router() -> None:
    spec = _spec(replicas=4, canary={"model": "models:/fraud/7", "traffic": 10},
                 shadow={"model": "runs:/abc123/model", "traffic": 5})
    objects = render_serving(spec, _options(router_replicas=3))
    deployments = _kind(objects, "Deployment")
    assert set(deployments) == {"fraud-primary", "fraud-canary", "fraud-shadow", "fraud-router"}
    # A canary or shadow runs its traffic share of the primary's replicas, at least one.
    assert [deployments[n]["spec"]["replicas"] for n in ("fraud-primary", "fraud-canary", "fraud-shadow",
                                                          "fraud-router")] == [4, 1, 1, 3]
    assert _command(_pods(objects)["fraud-canary"])[2] == "models:/fraud/7"
    command = _command(_pods(objects)["fraud-router"])
    assert command[:4] == ["capstan", "k8s", "router", "fraud"]
    assert _after(command, "--model") == "models:/fraud/6"
    assert _after(command, "--upstream") == "http://fraud-primary.fraud.svc:8080"
    assert (_after(command, "--canary"), _after(command, "--canary-traffic")) == ("models:/fraud/7", "10")
    assert _after(command, "--canary-upstream") == "http://fraud-canary.fraud.svc:8080"
    assert (_after(command, "--shadow"), _after(command, "--shadow-traffic")) == ("runs:/abc123/model", "5")
    assert _after(command, "--shadow-upstream") == "http://fraud-shadow.fraud.svc:8080"
    front = _kind(objects, "Service")["fraud"]
    assert front["spec"]["selector"] == {DEPLOYMENT_LABEL: "fraud", ROLE_LABEL: "router"}
    router_pdb = _kind(objects, "PodDisruptionBudget")["fraud-router"]
    assert router_pdb["spec"]["minAvailable"] == 2
    egress = _kind(objects, "NetworkPolicy")["fraud-router-egress"]["spec"]
    assert egress["podSelector"] == {"matchLabels": {DEPLOYMENT_LABEL: "fraud", ROLE_LABEL: "router"}}
    assert egress["egress"][0]["to"][0]["podSelector"]["matchExpressions"][1]["values"] == [
        "primary", "canary", "shadow"]


def test_an_autoscaled_canary_scales_within_its_share() -> None:
    spec = _spec(replicas=None, autoscaling={"min_replicas": 2, "max_replicas": 20, "target_rps": 5},
                 canary={"model": "models:/fraud/7", "traffic": 25})
    hpas = _kind(render_serving(spec, _options()), "HorizontalPodAutoscaler")
    assert (hpas["fraud-canary"]["spec"]["minReplicas"], hpas["fraud-canary"]["spec"]["maxReplicas"]) == (1, 5)
    assert hpas["fraud-canary"]["spec"]["metrics"] == hpas["fraud-primary"]["spec"]["metrics"]


def test_tls_mounts_the_secret_by_name_and_renders_a_certificate_with_an_issuer() -> None:
    tls = ServingTls("fraud-tls", issuer="letsencrypt", dns_names=("fraud.example.com",))
    objects = render_serving(_spec(), _options(tls=tls))
    pod = _pods(objects)["fraud-primary"]
    container = pod["containers"][0]
    assert {"name": "tls", "secret": {"secretName": "fraud-tls"}} in pod["volumes"]
    assert {"name": "tls", "mountPath": "/etc/capstan/tls", "readOnly": True} in container["volumeMounts"]
    assert _after(container["command"], "--tls-cert") == "/etc/capstan/tls/tls.crt"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert "tls.crt" not in yaml.safe_dump(pod["volumes"]).replace("secretName", "")  # referenced, not inlined
    cert = _kind(objects, "Certificate")["fraud"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"] == {"secretName": "fraud-tls",
                            "dnsNames": ["fraud", "fraud.fraud.svc", "fraud.fraud.svc.cluster.local",
                                         "fraud.example.com"],
                            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"}}


def test_certificate_validates_where_cert_manager_crd_is_present_else_only_its_kind_is_unknown(
        k8s_crds_dir: Path) -> None:
    objects = render_serving(_spec(), _options(tls=ServingTls("fraud-tls", issuer="ca")))
    assert not _kind(render_serving(_spec(), _options(tls=ServingTls("fraud-tls"))), "Certificate")  # opt-in
    folder = k8s_crds_dir / "cert-manager"
    errors = validate_documents(objects, crds=load_crds([folder]) if folder.is_dir() else None)
    if folder.is_dir():
        assert errors == []
    else:  # decision 0712: no cert-manager CRD in ../shared/k8s/crds, so the kind is all that is reported
        assert [(e.kind, e.path) for e in errors] == [("Certificate", "")]


def test_behind_a_router_tls_ends_at_the_router() -> None:
    spec = _spec(canary={"model": "models:/fraud/7", "traffic": 10})
    pods = _pods(render_serving(spec, _options(tls=ServingTls("fraud-tls"))))
    assert "--tls-cert" in _command(pods["fraud-router"])
    assert "--tls-cert" not in _command(pods["fraud-primary"]) and "--tls-cert" not in _command(pods["fraud-canary"])
    assert pods["fraud-router"]["containers"][0]["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"


def test_the_queue_label_goes_on_the_version_deployments() -> None:
    spec = _spec(resources={"cpu": 1, "queue": "serving"}, canary={"model": "models:/fraud/7", "traffic": 10})
    deployments = _kind(render_serving(spec, _options()), "Deployment")
    assert deployments["fraud-primary"]["metadata"]["labels"][QUEUE_NAME_LABEL] == "serving"
    assert QUEUE_NAME_LABEL not in deployments["fraud-router"]["metadata"]["labels"]


@pytest.mark.parametrize(("fields", "options", "message"), [
    ({"name": "7fraud"}, {}, r"^spec\.name: '7fraud' must start with a letter"),
    ({"name": "f" * 60}, {}, r"^spec\.name: .* at most 55 characters"),
    ({"resources": {"gpus": 0.5}}, {}, r"^spec\.resources\.gpus: 0\.5 GPU needs a shareable or MIG flavor"),
    ({}, {"image": " "}, r"^image: the native rendering runs the Capstan image"),
    ({}, {"namespace": "Bad_NS"}, r"^namespace: 'Bad_NS' is not a valid Kubernetes namespace"),
    ({}, {"tls": ServingTls("t", issuer_kind="Vault")}, r"^tls\.issuer_kind: must be ClusterIssuer or Issuer"),
    ({}, {"tls": ServingTls("t", dns_names=("a.example",))}, r"^tls\.dns_names: only apply to a Certificate"),
    ({}, {"cpu_utilization": 0}, r"^cpu_utilization: must be between 1 and 100"),
    ({}, {"store_secret": "s", "store_ports": (5432, 70000)}, r"^store_ports: must be ports \(1-65535\)"),
])
def test_native_refuses_what_kubernetes_would(fields: dict[str, Any], options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_serving(_spec(**fields), _options(**options))


# --- KServe -------------------------------------------------------------------------------------------------------

def test_kserve_inference_service_with_canary_percent_storage_and_scaling(crds: CrdSet) -> None:
    spec = _spec(replicas=None, autoscaling={"min_replicas": 0, "max_replicas": 8, "target_concurrency": 4},
                 canary={"model": "models:/fraud/7", "traffic": 10}, resources={"cpu": 1, "memory": "2Gi"})
    [isvc] = render_serving(spec, _options("kserve", storage_uris={"canary": "s3://models/fraud/7"}))
    assert validate_documents([isvc], crds=crds) == []
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["storageUri"] == "s3://models/fraud/7"
    assert predictor["model"]["modelFormat"] == {"name": "mlflow"}
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 8)  # KServe scales to zero itself
    assert (predictor["scaleMetric"], predictor["scaleTarget"]) == ("concurrency", 4)
    assert predictor["model"]["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                               "limits": {"memory": "2Gi"}}
    assert predictor["model"]["securityContext"] == kserve_pod(spec, _options("kserve"))["spec"]["containers"][0][
        "securityContext"]
    assert isvc["metadata"]["annotations"] == {KSERVE_SCRAPE: "true", "capstan.dev/primary-model": "models:/fraud/6"}


def test_kserve_without_canary_serves_the_primary_at_a_fixed_count(crds: CrdSet) -> None:
    spec = _spec(llm={"backend": "vllm"}, resources={"gpus": 1})
    [isvc] = render_serving(spec, _options("kserve", storage_uris={"primary": "pvc://models/llama"}))
    assert validate_documents([isvc], crds=crds) == []
    predictor = isvc["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (3, 3)
    assert predictor["model"]["modelFormat"] == {"name": "huggingface"}
    assert predictor["model"]["storageUri"] == "pvc://models/llama"


@pytest.mark.parametrize(("uri", "message"), [
    (None, r"^storage_uris\.primary: KServe downloads the primary model from an object store"),
    ("/home/me/model", r"^storage_uris\.primary: '/home/me/model' is a local path.*object store"),
    ("./model", r"is a local path"),
    ("file:///srv/model", r"is a local path"),
    ("ftp://host/model", r"the scheme must be one of s3, gs, pvc, https, hf"),
])
def test_kserve_needs_an_object_store_location(uri: str | None, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        storage_uri("primary", uri)
    if uri is not None:
        with pytest.raises(InvalidParameterValue, match=message):
            render_serving(_spec(), _options("kserve", storage_uris={"primary": uri}))


@pytest.mark.parametrize(("fields", "options", "message"), [
    ({"shadow": {"model": "models:/fraud/8", "traffic": 5}}, {}, r"^spec\.shadow: KServe cannot mirror traffic"),
    ({"replicas": None, "autoscaling": {"max_replicas": 2, "target_waiting": 4}},
     {"storage_uris": {"primary": "s3://m/6"}}, r"^spec\.autoscaling: KServe scales on concurrency or rps"),
    ({"canary": {"model": "models:/fraud/7", "traffic": 12.5}}, {"storage_uris": {"canary": "s3://m/7"}},
     r"^spec\.canary\.traffic: KServe's canaryTrafficPercent is a whole percent"),
    ({"canary": {"model": "models:/fraud/7", "traffic": 10}},
     {"storage_uris": {"canary": "s3://m/7", "primary": "s3://m/6"}}, r"^storage_uris\.primary: not used"),
    ({}, {"storage_uris": {"primary": "s3://m/6"}, "tls": ServingTls("t")}, r"^tls: KServe's ingress gateway"),
    ({}, {"storage_uris": {"primary": "s3://m/6"}, "model_format": "Not A Format"},
     r"^model_format: 'Not A Format' is not a KServe model format"),
])
def test_kserve_refuses_what_it_cannot_express(fields: dict[str, Any], options: dict[str, Any],
                                               message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_serving(_spec(**fields), _options("kserve", **options))


def test_kserve_can_leave_the_shadow_out_when_asked() -> None:
    spec = _spec(shadow={"model": "models:/fraud/8", "traffic": 5})
    [isvc] = render_serving(spec, _options("kserve", storage_uris={"primary": "s3://m/6"}, without_shadow=True))
    assert "models:/fraud/8" not in yaml.safe_dump(isvc)


# --- the CLI ------------------------------------------------------------------------------------------------------

def _k8s_group() -> Any:
    import click

    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_deployment.register(group)
    return group


@pytest.mark.parametrize("fmt", FORMATS)
def test_render_deployment_cli_writes_valid_manifests(fmt: str, tmp_path: Path, crds: CrdSet) -> None:
    source = REPO / "examples" / "serving" / "deployment.yaml"
    out = tmp_path / "out"
    extra = (["--image", IMAGE, "--store-secret", "capstan-store", "--tls-secret", "fraud-tls"] if fmt == "native"
             else ["--storage-uri", "canary=s3://models/fraud/7", "--without-shadow"])
    result = CliRunner().invoke(_k8s_group(), ["render", "deployment", str(source), "-o", str(out), "--format", fmt,
                                               "--namespace", "fraud", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert result.output.strip() == f"wrote {len(docs)} object(s) to {out}"
    assert validate_documents(docs, crds=crds) == []
    kinds = {d["kind"] for d in docs}
    if fmt == "native":
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds
    else:
        assert kinds == {"InferenceService"}


def test_render_deployment_cli_defaults_to_the_runtime_image(tmp_path: Path) -> None:
    source = tmp_path / "spec.yaml"
    source.write_text("name: fraud\nmodel: models:/fraud/6\n", encoding="utf-8")
    result = CliRunner().invoke(_k8s_group(), ["render", "deployment", str(source), "-o", str(tmp_path / "out")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    deployment = next(yaml.safe_load(p.read_text(encoding="utf-8")) for p in (tmp_path / "out").iterdir()
                      if p.name.startswith("deployment-"))
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "capstan-runtime:latest"


@pytest.mark.parametrize(("spec_text", "args", "message"), [
    ("name: fraud\nmodel: models:/fraud/6\nreplicas: 0\n", [], "error: spec.replicas: must be at least 1, got 0"),
    ("name: fraud\nmodel: fraud\n", [], "error: spec.model: 'fraud' is not a model URI"),
    ("name: fraud\nmodel: models:/fraud/6\ncanary: {model: models:/fraud/7, traffic: 120}\n", [],
     "error: spec.canary.traffic: must be between 0 and 100, got 120"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--format", "kserve", "--storage-uri", "primary=/data/model"],
     "error: storage_uris.primary: '/data/model' is a local path"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--format", "kserve", "--storage-uri", "primary"],
     "error: --storage-uri: 'primary' is not KEY=VALUE"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--storage-uri", "primary=s3://m/6"],
     "error: --storage-uri, --model-format and --without-shadow apply to --format kserve"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--gpu-flavor", "a100"], "error: --gpu-flavor: give --queue-config"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--store-secret", "s", "--server-url", "https://c:8080"],
     "error: --store-secret: the pods then read the stores directly"),
    ("name: fraud\nmodel: models:/fraud/6\n", ["--image", " "],
     "error: image: the native rendering runs the Capstan image"),
])
def test_render_deployment_cli_bad_input_is_one_line_and_fails(spec_text: str, args: list[str], message: str,
                                                               tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "spec.yaml"
    source.write_text(spec_text, encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        main(["k8s", "render", "deployment", str(source), "-o", str(tmp_path / "out"), *args])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()
