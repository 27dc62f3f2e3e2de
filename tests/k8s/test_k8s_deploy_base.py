"""The kustomize base that deploys Capstan itself (``deploy/kubernetes``): ``kubectl kustomize`` renders it, every
object validates strictly against the official Kubernetes 1.33 schemas, the server's pods pass the restricted
profile, and the base agrees with the renderers (the server's Role, the runtime image's user, the health route).
Schema-only: nothing here reaches an API server.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from capstan.k8s.pods import DEFAULT_USER, restricted_violations
from capstan.k8s.render_project import SERVER_RULES, ProjectOptions
from capstan.k8s.validate import validate_documents
from capstan.settings import ENV_VARIABLES

ROOT = Path(__file__).parents[2]
BASE = ROOT / "deploy" / "kubernetes"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it renders the kustomize base); install Debian's kubectl package")
    result = subprocess.run([kubectl, "kustomize", str(BASE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_the_base_validates_strictly(rendered: list[dict[str, Any]]) -> None:
    assert validate_documents(rendered) == []
    kinds = sorted(o["kind"] for o in rendered)
    assert kinds == ["ConfigMap", "Deployment", "Namespace", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
                     "PodDisruptionBudget", "Role", "RoleBinding", "Service", "ServiceAccount"]
    assert {o["metadata"].get("namespace") for o in rendered if o["kind"] != "Namespace"} == {"capstan-system"}


def test_a_typo_in_the_base_is_caught(rendered: list[dict[str, Any]]) -> None:
    broken = yaml.safe_load(yaml.safe_dump(rendered))
    deployment = _one(broken, "Deployment")
    deployment["spec"]["replica"] = deployment["spec"].pop("replicas")
    errors = validate_documents(broken)
    assert [(e.kind, e.path, e.message) for e in errors] == [("Deployment", "spec.replica", "unknown field")]


def test_the_server_runs_two_restricted_replicas(rendered: list[dict[str, Any]]) -> None:
    deployment = _one(rendered, "Deployment", "capstan-server")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert restricted_violations(pod) == []
    assert pod["securityContext"]["runAsUser"] == DEFAULT_USER  # the runtime image's user (Dockerfile)
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert {v["name"]: v for v in pod["volumes"]}[mounts["/tmp"]["name"]]["emptyDir"]
    namespace = _one(rendered, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pdb = _one(rendered, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_probes_use_the_health_route_over_tls(rendered: list[dict[str, Any]]) -> None:
    container = _one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"], get["scheme"]) == ("/health", "https", "HTTPS")
    args = container["args"]
    assert args[args.index("--tls-cert") + 1].startswith("/etc/capstan/tls/")
    tls = next(v for v in _one(rendered, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls")
    assert tls["secret"]["secretName"] == "capstan-server-tls"


def test_secrets_are_referenced_by_name_and_settings_are_real(rendered: list[dict[str, Any]]) -> None:
    container = _one(rendered, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert all("value" not in e and "secretKeyRef" in e["valueFrom"] for e in container["env"])
    by_name = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert by_name["CAPSTAN_DB_URL"] == {"name": "capstan-db", "key": "url"}
    assert not [o for o in rendered if o["kind"] == "Secret"]
    config = _one(rendered, "ConfigMap", "capstan-server-config")
    assert container["envFrom"] == [{"configMapRef": {"name": "capstan-server-config"}}]
    known = set(ENV_VARIABLES.values())
    assert [k for k in config["data"] if k.startswith("CAPSTAN_") and k not in known] == []
    assert config["data"]["CAPSTAN_ARTIFACTS"].startswith("s3://")
    assert not re.search(r"(?i)password|secret", yaml.safe_dump(config["data"]))


def test_the_servers_role_is_exactly_the_renderers(rendered: list[dict[str, Any]]) -> None:
    role = _one(rendered, "Role", "capstan-server")
    expected = [{"apiGroups": [r.api_group], "resources": [r.resource], "verbs": list(r.verbs)} for r in SERVER_RULES]
    assert role["rules"] == expected
    binding = _one(rendered, "RoleBinding", "capstan-server")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "capstan-server"}
    options = ProjectOptions()  # what project namespaces' policies and bindings assume about the server
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": options.server_service_account,
                                    "namespace": options.server_namespace}]
    deployment = _one(rendered, "Deployment")
    assert deployment["metadata"]["namespace"] == options.server_namespace
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in options.server_labels.items())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == \
        options.server_port


def test_network_policies_deny_by_default_and_open_the_server_port(rendered: list[dict[str, Any]]) -> None:
    policies = {o["metadata"]["name"]: o["spec"] for o in rendered if o["kind"] == "NetworkPolicy"}
    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    ingress = policies["allow-server-ingress"]
    assert ingress["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}]}]
    egress_ports = {p["port"] for rule in policies["allow-server-egress"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 5432, 443, 6443}


def test_the_dockerfile_runs_as_the_pods_user_with_capstan_as_entrypoint() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(rf"^USER {DEFAULT_USER}:{DEFAULT_USER}$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["capstan"\]$', text, re.MULTILINE)
