"""Studies as a controller Job running ``capstan tune``: the ConfigMap, state claim and Job validate strictly (official
schemas; no API server), the pod is restricted, the study file in the ConfigMap is one ``capstan tune -f`` reads
back, and the pod is sized for ``parallel_trials`` trials (trials inside the pod). Training-job trials as Jobs of
their own (decision 0745): the small controller's ServiceAccount, Role, RoleBinding, Service and NetworkPolicies
validate too and fit the trial Jobs the gang launcher renders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from capstan.cli import k8s_render, k8s_render_study
from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL
from capstan.k8s.pods import ClaimMount, restricted_violations
from capstan.k8s.render_studies import HOME_DIR, StudyRenderOptions, render_study, trial_labels
from capstan.k8s.render_study_trials import controller_rules
from capstan.k8s.validate import validate_documents
from capstan.queue.config import parse_config
from capstan.tuning.sdk import load_study_file
from capstan.tuning.spec import JobTrial, StudySpec, parse_study_spec
from helpers.server import capstan_command, clean_env

ROOT = Path(__file__).parents[2]

QUEUES = parse_config({
    "flavors": [{"name": "a100", "nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}}],
    "clusterQueues": [{"name": "cq", "resourceGroups": [{"coveredResources": ["cpu", "gpu"], "flavors": [
        {"name": "a100", "resources": [{"name": "cpu", "nominalQuota": 64}, {"name": "gpu", "nominalQuota": 8}]}]}]}],
    "localQueues": [{"name": "team", "clusterQueue": "cq", "project": "team-a"}],
    "priorityClasses": [{"name": "high", "value": 1000}],
})


def _study(**fields: Any) -> StudySpec:
    data: dict[str, Any] = {
        "name": "digits", "objective": {"metric": "accuracy"}, "max_trials": 12, "parallel_trials": 3,
        "parameters": {"lr": {"type": "float", "min": 1e-4, "max": 0.1, "log": True},
                       "solver": {"type": "categorical", "values": ["adam", "sgd"]}},
        "resources": {"cpu": 2, "memory": "1Gi"}, "queue": "team", "priority": "high",
        "trial": {"script": "train.py", "args": ["--lr", "${params.lr}"]}, "working_dir": "/home/ann/digits"}
    data.update(fields)
    return parse_study_spec(data)


def _job_trial() -> dict[str, Any]:
    return {"job": {"name": "trial", "entry": "train.py", "image": "acme/train:1", "workers": 2, "cpu": 4,
                    "memory": "8Gi", "gpus": 1, "gpu_flavor": "a100", "queue": "team",
                    "args": ["--lr", "${params.lr}"]}}


IN_POD = ["ConfigMap", "PersistentVolumeClaim", "Job"]
AS_JOBS = ["ConfigMap", "PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Service", "NetworkPolicy",
           "NetworkPolicy", "Job"]


@pytest.mark.parametrize(("fields", "in_pod", "kinds"), [
    ({}, False, IN_POD), ({"trial": _job_trial(), "resources": None}, True, IN_POD),
    ({"trial": _job_trial(), "resources": None}, False, AS_JOBS),
    ({"trial": {"function": "objective:train"}, "queue": None, "priority": None}, False, IN_POD)])
def test_renders_valid_restricted_objects(fields: dict[str, Any], in_pod: bool, kinds: list[str]) -> None:
    objects = render_study(_study(**fields), StudyRenderOptions(image="acme/study:1", project="team-a",
                                                                queue_config=QUEUES, trials_in_pod=in_pod))
    assert [o["kind"] for o in objects] == kinds
    assert validate_documents(objects) == []
    pod = objects[-1]["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []


def test_controller_job_resumes_and_is_queued() -> None:
    config_map, claim, job = render_study(_study(), StudyRenderOptions(image="acme/study:1", project="team-a",
                                                                        queue_config=QUEUES))
    spec = job["spec"]
    # one indexed completion: the pod's hostname is digits-0 every time, so a replacement resumes the study
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == \
        ("Indexed", 1, 1, 3)
    assert spec["suspend"] is True
    assert job["metadata"]["labels"][QUEUE_NAME_LABEL] == "team"
    assert job["metadata"]["labels"][PRIORITY_CLASS_LABEL] == "high"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["capstan", "tune", "-f", "/etc/capstan/study/study.yaml"]
    assert container["workingDir"] == "/app"
    # 3 parallel trials of 2 CPU and 1 GiB, plus the controller's 500m and 512 MiB
    assert container["resources"] == {"requests": {"cpu": "6500m", "memory": "3584Mi"},
                                      "limits": {"memory": "3584Mi"}}
    assert {"name": "CAPSTAN_HOME", "value": HOME_DIR} in container["env"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["claim-0"]["persistentVolumeClaim"] == {"claimName": "digits-state", "readOnly": False}
    assert volumes["config-0"]["configMap"] == {"name": config_map["metadata"]["name"]}


def test_study_file_is_what_capstan_tune_reads(tmp_path: Path) -> None:
    spec = _study(trial=_job_trial(), resources=None)
    config_map = render_study(spec, StudyRenderOptions(project="team-a", working_dir="/code",
                                                       queue_config=QUEUES, trials_in_pod=True))[0]
    path = tmp_path / "study.yaml"
    path.write_text(config_map["data"]["study.yaml"], encoding="utf-8")
    inside = load_study_file(path)
    assert (inside.queue, inside.priority, inside.working_dir) == (None, None, "/code")
    assert inside.parameters == spec.parameters and inside.max_trials == 12 and inside.parallel_trials == 3
    assert isinstance(inside.trial, JobTrial) and isinstance(spec.trial, JobTrial)
    assert (inside.trial.job.queue, inside.trial.job.gpu_flavor) == (None, None)
    assert inside.trial.job.args == spec.trial.job.args


def test_job_trials_size_the_pod_and_place_it() -> None:
    job = render_study(_study(trial=_job_trial(), resources=None, parallel_trials=2),
                       StudyRenderOptions(project="team-a", queue_config=QUEUES, state_claim="shared-state",
                                          datasets=(ClaimMount("digits-data", "/data"),), trials_in_pod=True))[-1]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "acme/train:1"  # the training-job trial's image
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"  # 2 trials x 2 workers x 1 GPU
    assert container["resources"]["requests"]["cpu"] == "16500m"
    assert pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["shared-state", "digits-data"]


@pytest.mark.parametrize(("spec", "options", "message"), [
    (_study(), StudyRenderOptions(), "study.image: a Kubernetes rendering needs a container image"),
    (_study(queue="nope"), StudyRenderOptions(image="i", queue_config=QUEUES), "study: queue: LocalQueue 'nope'"),
    (_study(queue=None), StudyRenderOptions(image="i"), "study.priority: a priority class needs a queue"),
    (_study(resources={"gpus": 1, "gpu_flavor": "h100"}), StudyRenderOptions(image="i", queue_config=QUEUES),
     "study.gpu_flavor: flavor 'h100' is not in the queue configuration"),
    (_study(), StudyRenderOptions(image="i", working_dir="app"), "working_dir: 'app' is not an absolute path"),
    (_study(), StudyRenderOptions(image="i", datasets=(ClaimMount("d", HOME_DIR),)), "datasets: d at /var/lib"),
])
def test_bad_input_names_the_field(spec: StudySpec, options: StudyRenderOptions, message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        render_study(spec, options)


def test_example_studies_render_valid_objects() -> None:
    examples = sorted((ROOT / "examples" / "studies").glob("*.yaml"))
    assert examples
    for path in examples:
        objects = render_study(load_study_file(path), StudyRenderOptions(image="acme/study:1", project="team-a"))
        assert validate_documents(objects) == [], path.name
        assert restricted_violations(objects[-1]["spec"]["template"]["spec"]) == [], path.name


def test_the_rendered_study_file_runs_the_study(tmp_path: Path) -> None:
    """What the controller pod does, on this machine: ``capstan tune -f`` on the ConfigMap's file, in a working
    directory that is the image's code folder; then again, as a replacement pod would (the study is not re-run)."""
    app, etc = tmp_path / "app", tmp_path / "etc"
    app.mkdir()
    etc.mkdir()
    (app / "train.py").write_text("import sys\nprint(f'accuracy={float(sys.argv[2])}')\n", encoding="utf-8")
    spec = _study(max_trials=2, parallel_trials=2, queue=None, priority=None, seed=3)
    config_map = render_study(spec, StudyRenderOptions(image="i", working_dir=str(app)))[0]
    (etc / "study.yaml").write_text(config_map["data"]["study.yaml"], encoding="utf-8")
    env = clean_env(tmp_path / "home", {"CAPSTAN_PROJECT": "default"})
    for _ in range(2):
        done = subprocess.run([*capstan_command(), "tune", "-f", str(etc / "study.yaml")], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 complete" in done.stdout, done.stdout


# --- capstan k8s render study ----------------------------------------------------------------------------------------

def _k8s_group() -> click.Group:
    group = click.Group("k8s")
    k8s_render.register(group)
    k8s_render_study.register(group)
    return group


def _study_file(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('accuracy=1')\n", encoding="utf-8")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": {k: v for k, v in _study().to_dict().items()
                                              if k not in ("working_dir", "priority")}}), encoding="utf-8")
    return path


def test_cli_writes_valid_manifests(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(_k8s_group(), [
        "render", "study", str(_study_file(tmp_path)), "-o", str(out), "--image", "acme/study:1", "--project",
        "team-a", "--state-size", "5Gi", "--env-from-secret", "capstan-db", "--dataset", "digits:/data"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
    assert validate_documents(docs) == [] and len(docs) == 3
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    job = next(d for d in docs if d["kind"] == "Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "capstan-db"}}]


@pytest.mark.parametrize(("args", "message"), [
    (["missing.yaml"], "STUDY.yaml: "),
    (["STUDY", "--state-size", "lots"], "--state-size: 'lots' is not a quantity"),
    (["STUDY"], "study.image: a Kubernetes rendering needs a container image"),
    (["STUDY", "--image", "i", "--dataset", "d"], "--dataset: 'd' is not NAME:/mount/path"),
])
def test_cli_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    study = str(_study_file(tmp_path))
    args = [study if a == "STUDY" else str(tmp_path / a) if a == "missing.yaml" else a for a in args]
    with pytest.raises(InvalidParameterValue) as info:  # `capstan.cli.main` prints it as one `error:` line
        CliRunner().invoke(_k8s_group(), ["render", "study", *args, "-o", str(tmp_path / "out")],
                           catch_exceptions=False)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_cli_has_no_format_for_studies(tmp_path: Path) -> None:
    """Trials are not rendered as separate objects (decision 0717), so no --format is offered."""
    result = CliRunner().invoke(_k8s_group(), ["render", "study", str(_study_file(tmp_path)), "-o",
                                               str(tmp_path / "out"), "--image", "i", "--format", "pytorchjob"])
    assert result.exit_code == 2 and "No such option '--format'" in result.output
    assert not (tmp_path / "out").exists()


# --- training-job trials as Jobs of their own (decision 0745) -------------------------------------------------------

def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector (matchLabels, Exists/DoesNotExist expressions) selects ``labels``."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        present = expression["key"] in labels
        if present != (expression["operator"] == "Exists"):
            return False
    return True


def _trial_job(number: int, queue: str | None = "team") -> dict[str, Any]:
    """The Job the controller's gang launcher creates for trial ``number`` (as in the pod: Kueue mode)."""
    from capstan.k8s.training_launcher import KubeGangLauncher, KubeTrainingOptions
    from capstan.training.spec import parse_job_spec

    launcher = KubeGangLauncher(lambda: pytest.fail("no API call"), home=Path("/tmp"), events=None,  # type: ignore[arg-type]  # rendering uses neither
                                options=KubeTrainingOptions(kueue=queue is not None))
    spec = parse_job_spec({"name": f"digits-t{number}", "entry": "train.py", "image": "acme/train:1", "workers": 2,
                           "queue": queue, "env": {"CAPSTAN_STUDY": "digits", "CAPSTAN_TRIAL_NUMBER": str(number)}})
    return next(d for d in launcher.render(spec, job_id=f"digits-t{number}-x1", attempt=1) if d["kind"] == "Job")


def test_job_trials_get_a_small_controller_that_creates_them() -> None:
    objects = render_study(_study(trial=_job_trial(), resources=None),
                           StudyRenderOptions(project="team-a", queue_config=QUEUES, env_from_secrets=("stores",)))
    by = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("Service", "digits-controller") in by and ("NetworkPolicy", "digits-trials") in by
    job = objects[-1]
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["serviceAccountName"] == "digits-controller" and pod["automountServiceAccountToken"] is True
    container = pod["containers"][0]
    # CPU and memory for the controller only: no GPUs, whatever the trials ask
    assert container["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}
    assert container["image"] == "acme/train:1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CAPSTAN_BACKEND"] == "kubernetes" and env["CAPSTAN_KUBE_NAMESPACE"] == "team-a"
    assert env["CAPSTAN_KUBE_ADMISSION"] == "kueue"  # the study has a queue: Kueue admits each trial's Job
    assert env["CAPSTAN_KUBE_ENV_FROM"] == "digits-trial-key,stores"  # the trial pods' envFrom
    assert env["CAPSTAN_TRIAL_LISTEN"] == "digits-controller.team-a.svc:7077"
    key = next(e for e in container["env"] if e["name"] == "CAPSTAN_TRIAL_KEY")
    assert key == {"name": "CAPSTAN_TRIAL_KEY",
                   "valueFrom": {"secretKeyRef": {"name": "digits-trial-key", "key": "CAPSTAN_TRIAL_KEY"}}}
    assert not any(o["kind"] == "Secret" for o in objects)  # the key is never rendered
    # the controller Job itself is not queued: the trials are
    assert QUEUE_NAME_LABEL not in job["metadata"]["labels"] and "suspend" not in job["spec"]
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["rules"] == controller_rules(kueue=True)
    verbs = {(r["resources"][0], v) for r in role["rules"] for v in r["verbs"]}
    assert ("workloads", "watch") in verbs and ("jobs", "create") in verbs and ("secrets", "get") not in verbs
    binding = next(o for o in objects if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "digits-controller", "namespace": "team-a"}]


def test_the_service_and_policies_fit_the_controller_and_the_trial_jobs() -> None:
    objects = render_study(_study(trial=_job_trial(), resources=None),
                           StudyRenderOptions(project="team-a", queue_config=QUEUES, trial_port=7100))
    controller_pod = objects[-1]["spec"]["template"]
    controller_labels = controller_pod["metadata"]["labels"]
    trial = _trial_job(3)
    pod_labels = trial["spec"]["template"]["metadata"]["labels"]
    assert trial["metadata"]["labels"][QUEUE_NAME_LABEL] == "team" and trial["spec"]["suspend"] is True
    assert trial["metadata"]["labels"]["capstan.dev/trial"] == "3" and pod_labels["capstan.dev/study"] == "digits"
    service = next(o for o in objects if o["kind"] == "Service")
    assert _matches({"matchLabels": service["spec"]["selector"]}, controller_labels)
    assert not _matches({"matchLabels": service["spec"]["selector"]}, pod_labels)
    port = service["spec"]["ports"][0]
    assert port["port"] == 7100
    assert {"name": port["targetPort"], "containerPort": 7100, "protocol": "TCP"} in \
        controller_pod["spec"]["containers"][0]["ports"]
    inbound = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "digits-controller")
    outbound = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "digits-trials")
    assert _matches(inbound["spec"]["podSelector"], controller_labels)
    assert not _matches(inbound["spec"]["podSelector"], pod_labels)
    assert _matches(inbound["spec"]["ingress"][0]["from"][0]["podSelector"], pod_labels)
    assert inbound["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 7100}]
    assert [p["port"] for p in inbound["spec"]["egress"][0]["ports"]] == [443, 6443]  # the API server
    assert _matches(outbound["spec"]["podSelector"], pod_labels)
    assert not _matches(outbound["spec"]["podSelector"], controller_labels)
    assert _matches(outbound["spec"]["egress"][0]["to"][0]["podSelector"], controller_labels)
    # a job that is not a study's trial gets neither label
    assert trial_labels({}) == {} and trial_labels({"CAPSTAN_STUDY": "Bad Name", "CAPSTAN_TRIAL_NUMBER": "1"}) == {}


def test_trial_jobs_study_file_keeps_the_queue_for_the_trials(tmp_path: Path) -> None:
    spec = _study(trial=_job_trial(), resources=None)
    objects = render_study(spec, StudyRenderOptions(project="team-a", working_dir="/code", queue_config=QUEUES))
    path = tmp_path / "study.yaml"
    path.write_text(objects[0]["data"]["study.yaml"], encoding="utf-8")
    inside = load_study_file(path)
    assert (inside.queue, inside.priority, inside.working_dir) == (None, None, "/code")
    assert isinstance(inside.trial, JobTrial)
    job = inside.trial.job
    # queue and priority become each trial Job's Kueue labels; Kueue's flavors place it; pods start in WORKDIR
    assert (job.queue, job.priority, job.gpu_flavor, job.working_dir, job.image) == \
        ("team", "high", None, None, "acme/train:1")


def test_trial_jobs_get_the_datasets_and_the_controller_does_not() -> None:
    options = StudyRenderOptions(queue_config=QUEUES, datasets=(ClaimMount("digits", "/data"),
                                                                ClaimMount("out", "/results", read_only=False)))
    objects = render_study(_study(trial=_job_trial(), resources=None), options)
    assert validate_documents(objects) == []
    pod = objects[-1]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CAPSTAN_KUBE_DATASETS"] == "digits:/data:ro,out:/results:rw"  # the trial Jobs mount these
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"digits-state"}  # the controller mounts its state claim only


def test_job_trials_without_a_queue_are_created_at_once() -> None:
    trial = _job_trial()
    trial["job"].pop("queue")
    trial["job"].pop("gpu_flavor")
    objects = render_study(_study(trial=trial, resources=None, queue=None, priority=None),
                           StudyRenderOptions(image="acme/other:2", trial_key_secret="shared-key"))
    assert validate_documents(objects) == []
    container = objects[-1]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CAPSTAN_KUBE_ADMISSION"] == "none" and env["CAPSTAN_KUBE_ENV_FROM"] == "shared-key"
    role = next(o for o in objects if o["kind"] == "Role")
    assert role["rules"] == controller_rules(kueue=False)
    assert not _trial_job(0, queue=None)["spec"].get("suspend")


@pytest.mark.parametrize(("fields", "options", "message"), [
    ({"queue": None, "priority": None}, StudyRenderOptions(),
     "study.trial.job.gpu_flavor: trials that run as their own Jobs are placed by Kueue's flavors"),
    ({}, StudyRenderOptions(queue_config=QUEUES, datasets=(ClaimMount("d", "/data"), ClaimMount("e", "/data/x"))),
     "datasets: e at /data/x clashes with the mount at /data"),
    ({"name": "d" * 53}, StudyRenderOptions(queue_config=QUEUES), "study.name: .* at most 52 characters"),
    ({}, StudyRenderOptions(queue_config=QUEUES, trial_key_secret="Bad_Key"), "trial_key_secret: 'Bad_Key'"),
    ({}, StudyRenderOptions(queue_config=QUEUES, env_from_secrets=("digits-trial-key",)),
     "env_from_secrets: a Secret is named twice"),
    ({"queue": "nope"}, StudyRenderOptions(queue_config=QUEUES), "study: queue: LocalQueue 'nope'"),
])
def test_job_trials_bad_input_names_the_field(fields: dict[str, Any], options: StudyRenderOptions,
                                              message: str) -> None:
    trial = _job_trial()
    trial["job"].pop("queue")
    with pytest.raises(InvalidParameterValue, match=message):
        render_study(_study(trial=trial, resources=None, **fields), options)


def test_cli_renders_trial_jobs_and_says_which_secret_to_create(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('accuracy=1')\n", encoding="utf-8")
    data = {k: v for k, v in _study(trial=_job_trial(), resources=None).to_dict().items()
            if k not in ("working_dir", "priority")}
    data["trial"]["job"].pop("gpu_flavor")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"study": data}), encoding="utf-8")
    for flags, count in (([], 9), (["--trials-in-pod"], 3)):
        out = tmp_path / f"out{count}"
        result = CliRunner().invoke(_k8s_group(), ["render", "study", str(path), "-o", str(out), "--project",
                                                   "team-a", *flags], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        docs = [yaml.safe_load(p.read_text(encoding="utf-8")) for p in sorted(out.iterdir())]
        assert len(docs) == count and validate_documents(docs) == []
        says = "create secret generic digits-trial-key --from-literal=CAPSTAN_TRIAL_KEY="
        assert (says in result.output) == (count == 9), result.output
