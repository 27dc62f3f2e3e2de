"""The project-namespace renderer: every object validates strictly against the official Kubernetes 1.33 schemas
(kubernetes-validate, unknown fields are errors), and the security settings are the ones docs/kubernetes-security.md
promises. Schema-only: no API server or network plugin enforces anything here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_project
from capstan.errors import InvalidParameterValue
from capstan.k8s.render_project import (
    COMPONENT_LABEL,
    PROJECT_SERVICE_ACCOUNT,
    SERVER_RULES,
    ProjectOptions,
    TlsOptions,
    nominal_quota,
    render_project,
)
from capstan.k8s.render_queues import KueueOptions, MigProfile
from capstan.k8s.validate import validate_documents
from capstan.queue.config import load_config, parse_config

ROOT = Path(__file__).parents[2]
TEAMS = ROOT / "examples" / "queues" / "teams.yaml"


def _by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o["spec"] for o in _by_kind(objects, "NetworkPolicy")}


@pytest.mark.parametrize("example", sorted((ROOT / "examples" / "queues").glob("*.yaml")), ids=lambda p: p.name)
def test_every_project_of_every_queue_example_validates_strictly(example: Path) -> None:
    config = load_config(example)
    for project in sorted({lq.project for lq in config.local_queues}):
        objects = render_project(project, config)
        assert validate_documents(objects) == []
        assert [o["kind"] for o in objects].count("ResourceQuota") == 1


def test_a_typo_in_a_rendered_policy_is_caught() -> None:
    objects = render_project("nlp")
    policy = _by_kind(objects, "NetworkPolicy")[0]
    policy["spec"]["policyType"] = policy["spec"].pop("policyTypes")
    errors = validate_documents(objects)
    assert [(e.kind, e.path, e.message) for e in errors] == [("NetworkPolicy", "spec.policyType", "unknown field")]


def test_the_namespace_enforces_audits_and_warns_restricted_at_a_pinned_version() -> None:
    labels = _by_kind(render_project("nlp", options=ProjectOptions(pod_security_version="v1.32")),
                      "Namespace")[0]["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"
        assert labels[f"pod-security.kubernetes.io/{mode}-version"] == "v1.32"


def test_the_project_service_account_gets_no_token_unless_asked() -> None:
    def account(options: ProjectOptions) -> dict[str, Any]:
        [sa] = [o for o in render_project("nlp", options=options)
                if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == PROJECT_SERVICE_ACCOUNT]
        return sa

    assert account(ProjectOptions())["metadata"]["namespace"] == "nlp"
    assert account(ProjectOptions())["automountServiceAccountToken"] is False
    assert account(ProjectOptions(mount_token=True))["automountServiceAccountToken"] is True


def test_the_server_role_lists_its_verbs_without_wildcards_and_binds_the_server_account() -> None:
    objects = render_project("vision", options=ProjectOptions(server_namespace="ops", server_service_account="cs"))
    [role] = _by_kind(objects, "Role")
    [binding] = _by_kind(objects, "RoleBinding")
    [server_sa] = [o for o in _by_kind(objects, "ServiceAccount") if o["metadata"]["name"] == "cs"]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "vision"
    assert server_sa["metadata"]["namespace"] == "ops"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cs"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cs", "namespace": "ops"}]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    assert not any("*" in part for entry in granted for part in entry)
    assert not {r for _, r, _ in granted} & {"secrets", "pods/exec", "pods/attach", "roles", "rolebindings"}
    assert ("batch", "jobs", "patch") in granted and ("", "pods/log", "get") in granted
    assert ("", "pods", "delete") not in granted and ("", "events", "create") not in granted
    assert len(granted) == sum(len(r.verbs) for r in SERVER_RULES)
    assert all(rule.why for rule in SERVER_RULES)


def test_default_deny_covers_ingress_and_egress_of_every_pod() -> None:
    deny = _policies(render_project("nlp"))["default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def test_the_allow_rules_are_exactly_dns_server_serving_and_training() -> None:
    options = ProjectOptions(server_namespace="ops", server_labels={"app": "capstan"}, server_port=9443,
                             serving_port=8443)
    policies = _policies(render_project("nlp", options=options))
    assert set(policies) == {"default-deny", "allow-dns", "allow-capstan-server", "allow-serving-ingress",
                             "allow-training-rendezvous"}
    assert policies["allow-dns"] == {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}
    assert policies["allow-capstan-server"] == {
        "podSelector": {}, "policyTypes": ["Egress"],
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                            "podSelector": {"matchLabels": {"app": "capstan"}}}],
                    "ports": [{"protocol": "TCP", "port": 9443}]}]}
    assert policies["allow-serving-ingress"] == {
        "podSelector": {"matchLabels": {COMPONENT_LABEL: "serving"}}, "policyTypes": ["Ingress"],
        "ingress": [{"ports": [{"protocol": "TCP", "port": 8443}]}]}
    training = {"podSelector": {"matchLabels": {COMPONENT_LABEL: "training"}}}
    assert policies["allow-training-rendezvous"] == {
        **training, "policyTypes": ["Ingress", "Egress"], "ingress": [{"from": [training]}],
        "egress": [{"to": [training]}]}


def test_the_quota_is_the_nominal_quota_of_the_projects_cluster_queue() -> None:
    config = load_config(TEAMS)
    [quota] = _by_kind(render_project("nlp", config), "ResourceQuota")
    # team-a: cpu 64, memory 256Gi, 8 whole A100s, 1 MPS-shared A100 in 4 slots
    assert quota["spec"]["hard"] == {"requests.cpu": "64", "requests.memory": "256Gi",
                                     "requests.nvidia.com/gpu": "8", "requests.nvidia.com/gpu.shared": "4"}
    assert nominal_quota("platform", config) == {"requests.nvidia.com/gpu": "4"}
    mig = KueueOptions(mig={"a100-shared": MigProfile("1g.10gb", 7)})
    assert nominal_quota("vision", config, mig) == {"requests.cpu": "32", "requests.memory": "128Gi",
                                                    "requests.nvidia.com/gpu": "6",
                                                    "requests.nvidia.com/mig-1g.10gb": "7"}


def test_a_project_with_two_queues_gets_their_sum_and_a_shared_queue_counts_once() -> None:
    config = parse_config({
        "flavors": [{"name": "cpu"}],
        "clusterQueues": [
            {"name": f"q{i}", "resourceGroups": [{"coveredResources": ["cpu"], "flavors": [
                {"name": "cpu", "resources": [{"name": "cpu", "nominalQuota": "1500m"}]}]}]} for i in (1, 2)],
        "localQueues": [{"name": "a", "clusterQueue": "q1", "project": "p"},
                        {"name": "b", "clusterQueue": "q2", "project": "p"},
                        {"name": "c", "clusterQueue": "q2", "project": "p"}]})
    assert nominal_quota("p", config) == {"requests.cpu": "3"}


def test_a_project_without_a_local_queue_is_refused_by_name() -> None:
    with pytest.raises(InvalidParameterValue, match=r"project 'nobody'.*projects with one: default, nlp"):
        render_project("nobody", load_config(TEAMS))


@pytest.mark.parametrize(("project", "options", "field"), [
    ("Bad_Name", ProjectOptions(), "project"),
    ("nlp", ProjectOptions(server_namespace="-x"), "server_namespace"),
    ("nlp", ProjectOptions(server_port=0), "server_port"),
    ("nlp", ProjectOptions(serving_port=70000), "serving_port"),
    ("nlp", ProjectOptions(server_labels={}), "server_labels"),
    ("nlp", ProjectOptions(pod_security_version="1.33"), "pod_security_version"),
    ("nlp", ProjectOptions(tls=TlsOptions(issuer="")), "tls.issuer"),
    ("nlp", ProjectOptions(tls=TlsOptions(issuer="ca", issuer_kind="Vault")), "tls.issuer_kind"),
])
def test_bad_options_name_the_field(project: str, options: ProjectOptions, field: str) -> None:
    with pytest.raises(InvalidParameterValue, match=f"^{field}:"):
        render_project(project, options=options)


def test_no_certificate_unless_asked_and_it_is_the_one_object_that_cannot_be_validated_here() -> None:
    assert not _by_kind(render_project("nlp"), "Certificate")
    objects = render_project("nlp", options=ProjectOptions(tls=TlsOptions(issuer="letsencrypt", secret_name="s")))
    [cert] = _by_kind(objects, "Certificate")
    assert cert["spec"] == {"secretName": "s", "dnsNames": ["*.nlp.svc", "*.nlp.svc.cluster.local"],
                            "issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer", "group": "cert-manager.io"}}
    # No cert-manager CRD in ../shared/k8s/crds: the strict validator reports the kind as unknown, nothing else.
    errors = validate_documents(objects)
    assert [(e.kind, e.path) for e in errors] == [("Certificate", "")]


# --- capstan k8s render project ----------------------------------------------------------------------------------

def _k8s_group() -> click.Group:
    """The ``capstan k8s`` group with the render parts, as `capstan.cli.k8s_cmds` assembles it."""
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_project.register(group)
    return group


def test_render_project_cli_writes_one_valid_file_per_object(tmp_path: Path) -> None:
    out = tmp_path / "manifests"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "project", "vision", "--queues", str(TEAMS), "-o", str(out), "--server-namespace", "ops",
        "--server-label", "app=capstan", "--server-port", "9443", "--mig", "a100-shared=1g.10gb:7"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert result.output.strip() == f"wrote {len(docs)} object(s) for project vision to {out}"
    assert validate_documents(docs) == []
    [quota] = _by_kind(docs, "ResourceQuota")
    assert quota["spec"]["hard"]["requests.nvidia.com/mig-1g.10gb"] == "7"
    server = _policies(docs)["allow-capstan-server"]["egress"][0]
    assert server["to"][0]["podSelector"] == {"matchLabels": {"app": "capstan"}}
    assert server["ports"] == [{"protocol": "TCP", "port": 9443}]
    assert {p.name for p in out.iterdir()} >= {"namespace-vision.yaml", "serviceaccount-ops-capstan-server.yaml",
                                               "resourcequota-vision-capstan-queue.yaml"}


def test_render_project_cli_without_queues_has_no_quota_and_tls_only_when_asked(tmp_path: Path) -> None:
    result = CliRunner().invoke(_k8s_group(), ["render", "project", "nlp", "-o", str(tmp_path / "a")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "a").glob("resourcequota-*")) and not list((tmp_path / "a").glob("certificate-*"))
    result = CliRunner().invoke(_k8s_group(), ["render", "project", "nlp", "-o", str(tmp_path / "b"),
                                               "--tls-issuer", "ca", "--tls-issuer-kind", "Issuer"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cert = yaml.safe_load((tmp_path / "b" / "certificate-nlp-capstan-serving.yaml").read_text(encoding="utf-8"))
    assert cert["spec"]["issuerRef"]["kind"] == "Issuer"


@pytest.mark.parametrize(("args", "message"), [
    (["--server-label", "app"], "--server-label: 'app' is not KEY=VALUE"),
    (["--tls-secret", "x"], "--tls-secret/--tls-issuer-kind: only apply with --tls-issuer"),
    (["--mig", "a100=1g.10gb:7"], "--gpu-resource/--shared-gpu-resource/--mig: only apply with --queues"),
    (["--queues", str(TEAMS), "--server-port", "0"], "server_port: 0 is not a port"),
    (["--queues", str(TEAMS), "--pod-security-version", "1.33"], "pod_security_version:"),
])
def test_render_project_cli_bad_options_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "project", "nlp", "-o", str(tmp_path / "out"), *args],
                           catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_render_project_is_registered_in_the_capstan_cli() -> None:
    from capstan.cli import k8s_cmds

    assert k8s_cmds.PARTS.index("capstan.cli.k8s_render_project") > k8s_cmds.PARTS.index("capstan.cli.k8s_render")
    group = click.Group("root")
    k8s_cmds.register(group)
    k8s = group.commands["k8s"]
    assert isinstance(k8s, click.Group)
    render = k8s.commands["render"]
    assert isinstance(render, click.Group) and "project" in render.commands
