"""Render a study whose training-job trials run as their own Jobs (decision 0745). Pure.

`capstan.k8s.render_studies.render_study` calls `render_trial_jobs_study` for a study whose trial is a training
job (unless ``trials_in_pod``). The study's controller, ``capstan tune -f``, still runs in one indexed Job of one
completion (it resumes the study when replaced, decision 0717), but small: CPU and memory for the controller only.
It runs with the ``kubernetes`` backend, so each trial's job is an indexed Job and a headless Service of its own,
created, followed and deleted by the gang launcher (`capstan.k8s.training_launcher`), with the trial's parameters
in its arguments and environment as locally. The objects, in apply order:

- ``ConfigMap <study>-study``: the study file, with the trial job's ``queue`` and ``priority`` (the study's when
  the job names none: they become each trial Job's Kueue labels) and ``image`` (``--image`` when the job names
  none); no ``working_dir`` (trial pods start in the image's ``WORKDIR``) and no ``gpu_flavor`` (Kueue's flavors
  place a queued trial; without a queue a flavor is refused);
- ``PersistentVolumeClaim <study>-state`` (unless ``state_claim``): the controller's ``CAPSTAN_HOME``;
- ``ServiceAccount``, ``Role`` and ``RoleBinding`` ``<study>-controller``: exactly `controller_rules`;
- ``Service <study>-controller``: the controller's report port (``trial_port``), where trials connect
  (``CAPSTAN_TRIAL_ADDRESS=tcp://<study>-controller.<namespace>.svc:<port>``);
- ``NetworkPolicy <study>-controller`` (the controller: ingress on that port from the study's trial pods, egress to
  the API server's ports) and ``NetworkPolicy <study>-trials`` (the trial pods: egress to that port), which
  open what the project's default-deny policy (`capstan.k8s.render_project`) closes;
- the controller ``Job <study>``: with a queue ``CAPSTAN_KUBE_ADMISSION=kueue`` (each trial's Job is created
  suspended with the queue's labels and Kueue admits it), else ``none`` (created at once); ``parallel_trials``
  bounds how many trial Jobs exist at once. The key is ``CAPSTAN_TRIAL_KEY`` of the Secret ``trial_key_secret``,
  referenced by the controller (``secretKeyRef``) and by every trial pod (``envFrom``, through
  ``CAPSTAN_KUBE_ENV_FROM``, with the ``env_from_secrets`` the trials need to reach the stores); its value is
  never rendered. The ``datasets`` go to ``CAPSTAN_KUBE_DATASETS``: every trial pod mounts them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import workload_labels
from capstan.k8s.pods import ClaimMount, ConfigMapMount, Container, PodOptions, Resources, SecretEnv, pod_template
from capstan.k8s.render_datasets import Dataset, check_mounts, render_dataset
from capstan.k8s.render_queues import namespace_for
from capstan.k8s.render_studies import (
    CONTAINER,
    CONTROLLER_CPU,
    CONTROLLER_LABEL,
    HOME_DIR,
    STUDY_DIR,
    STUDY_FILE,
    STUDY_LABEL,
    TRIAL_KEY,
    TRIAL_LABEL,
    TRIALS_CONTROLLER_MEMORY,
    StudyRenderOptions,
    controller_job_spec,
)
from capstan.k8s.render_training import check_secret_names
from capstan.tuning.spec import JobTrial, StudySpec

__all__ = ["controller_rules", "render_trial_jobs_study", "trial_jobs_study"]

MANAGED: Final = {"app.kubernetes.io/managed-by": "capstan"}
KUEUE_GROUP: Final = "kueue.x-k8s.io"
_PORT_NAME: Final = "trials"


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def controller_rules(kueue: bool) -> list[dict[str, Any]]:
    """The Role's rules: what the controller's gang launcher calls, and nothing else. Jobs: create, follow
    (list, watch), wait for one to go (get), delete; Services: create, delete; pods: list and watch (the failing
    pod, the completion index), read their logs; ResourceQuotas: list (the preflight; the nodes are cluster-wide,
    which a Role cannot grant, and that check is skipped when refused); with Kueue, Workloads: list (the
    preflight) and watch (pending reasons)."""
    rules: list[dict[str, Any]] = [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["resourcequotas"], "verbs": ["list"]},
    ]
    if kueue:
        rules.append({"apiGroups": [KUEUE_GROUP], "resources": ["workloads"], "verbs": ["list", "watch"]})
    return rules


def trial_jobs_study(spec: StudySpec, opts: StudyRenderOptions) -> StudySpec:
    """The study as the controller pod runs it when its trials are Jobs (see the module docstring)."""
    trial = spec.trial
    assert isinstance(trial, JobTrial)
    job = trial.job
    queue = job.queue or spec.queue
    priority = (job.priority or spec.priority) if queue else None
    if (job.priority or spec.priority) and queue is None:
        raise _fail("study.priority", "a priority class needs a queue")
    if job.gpu_flavor is not None and queue is None:
        raise _fail("study.trial.job.gpu_flavor", "trials that run as their own Jobs are placed by Kueue's flavors: "
                                                  "give the study a queue, or leave gpu_flavor out")
    if queue is not None and opts.queue_config is not None:
        try:
            workload_labels(opts.queue_config, queue, priority)
        except InvalidParameterValue as exc:
            raise _fail("study", exc.message) from None
    image = job.image or opts.image
    if not image:
        raise _fail("study.image", "a Kubernetes rendering needs a container image with Capstan and the trials' "
                                   "code (--image)")
    cluster_job = dataclasses.replace(job, queue=queue, priority=priority, gpu_flavor=None, working_dir=None,
                                      image=image)
    return dataclasses.replace(spec, queue=None, priority=None, trial=JobTrial(cluster_job),
                               working_dir=opts.working_dir,
                               resources=dataclasses.replace(spec.resources, gpu_flavor=None))


def _object(api: str, kind: str, name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace, "labels": labels}}


def _names(spec: StudySpec, opts: StudyRenderOptions) -> tuple[str, str]:
    """The controller's object name (ServiceAccount, Role, Service...) and the trial-key Secret's."""
    controller = f"{spec.name}-controller"
    if len(controller) > 63 or not spec.name[:1].isalpha():
        raise _fail("study.name", f"{spec.name!r}: trials that run as Jobs need a name that starts with a letter and "
                                  "has at most 52 characters (the Service <name>-controller is a DNS label)")
    secret = opts.trial_key_secret or f"{spec.name}-trial-key"
    check_secret_names((secret,), path="trial_key_secret")
    check_secret_names((secret, *opts.env_from_secrets))  # the trial pods get them all (envFrom)
    if not 1 <= opts.trial_port <= 65535:
        raise _fail("trial_port", f"{opts.trial_port} is not a port (1-65535)")
    if any(not 1 <= p <= 65535 for p in opts.api_server_ports):
        raise _fail("api_server_ports", f"{list(opts.api_server_ports)} holds a number that is not a port")
    return controller, secret


def _rbac(name: str, namespace: str, labels: dict[str, str], kueue: bool) -> list[dict[str, Any]]:
    account = _object("v1", "ServiceAccount", name, namespace, labels)
    account["automountServiceAccountToken"] = False  # only the controller pod mounts it, asking explicitly
    role = _object("rbac.authorization.k8s.io/v1", "Role", name, namespace, labels)
    role["rules"] = controller_rules(kueue)
    binding = _object("rbac.authorization.k8s.io/v1", "RoleBinding", name, namespace, labels)
    binding["roleRef"] = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}
    binding["subjects"] = [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]
    return [account, role, binding]


def _network(spec: StudySpec, opts: StudyRenderOptions, name: str, namespace: str,
             labels: dict[str, str]) -> list[dict[str, Any]]:
    controller = {"matchLabels": {STUDY_LABEL: spec.name, CONTROLLER_LABEL: spec.name}}
    trials = {"matchLabels": {STUDY_LABEL: spec.name},
              "matchExpressions": [{"key": TRIAL_LABEL, "operator": "Exists"}]}
    port = [{"protocol": "TCP", "port": opts.trial_port}]
    service = _object("v1", "Service", name, namespace, labels)
    service["spec"] = {"selector": dict(controller["matchLabels"]),
                       "ports": [{"name": _PORT_NAME, "protocol": "TCP", "port": opts.trial_port,
                                  "targetPort": _PORT_NAME}]}
    inbound = _object("networking.k8s.io/v1", "NetworkPolicy", name, namespace, labels)
    inbound["spec"] = {"podSelector": controller, "policyTypes": ["Ingress", "Egress"],
                       "ingress": [{"from": [{"podSelector": trials}], "ports": port}],
                       "egress": [{"ports": [{"protocol": "TCP", "port": p} for p in opts.api_server_ports]}]}
    outbound = _object("networking.k8s.io/v1", "NetworkPolicy", f"{spec.name}-trials", namespace, labels)
    outbound["spec"] = {"podSelector": trials, "policyTypes": ["Egress"],
                        "egress": [{"to": [{"podSelector": controller}], "ports": port}]}
    return [service, inbound, outbound]


def render_trial_jobs_study(spec: StudySpec, opts: StudyRenderOptions) -> list[dict[str, Any]]:
    """Every object of a study whose training-job trials run as Jobs, in apply order (see the module docstring).
    `InvalidParameterValue` naming the field, as `capstan.k8s.render_studies.render_study`, and for a name too
    long for the controller's Service, a bad Secret name or port, or a ``gpu_flavor`` without a queue. The
    ``datasets`` are mounted by the trial Jobs (the controller passes them on as ``CAPSTAN_KUBE_DATASETS``), not
    by the controller pod."""
    import yaml

    datasets = check_mounts(opts.datasets, path="datasets")  # the trial Jobs mount them, not the controller
    namespace = namespace_for(opts.project)
    name, secret = _names(spec, opts)
    cluster = trial_jobs_study(spec, opts)
    assert isinstance(cluster.trial, JobTrial)
    kueue = cluster.trial.job.queue is not None
    labels = {**MANAGED, STUDY_LABEL: spec.name}
    objects: list[dict[str, Any]] = [_object("v1", "ConfigMap", f"{spec.name}-study", namespace, dict(labels))]
    objects[0]["data"] = {STUDY_FILE: yaml.safe_dump(cluster.to_dict(), sort_keys=False)}
    state = opts.state_claim
    if state is None:
        state = f"{spec.name}-state"
        objects.append(render_dataset(Dataset(name=state, size_bytes=opts.state_bytes, access="read-write-once",
                                              project=opts.project, storage_class=opts.storage_class)))
    objects += _rbac(name, namespace, dict(labels), kueue)
    objects += _network(spec, opts, name, namespace, dict(labels))
    env = {"CAPSTAN_HOME": HOME_DIR, "CAPSTAN_PROJECT": opts.project, "HOME": "/tmp",
           "CAPSTAN_BACKEND": "kubernetes", "CAPSTAN_KUBE_NAMESPACE": namespace,
           "CAPSTAN_KUBE_ADMISSION": "kueue" if kueue else "none",
           "CAPSTAN_KUBE_ENV_FROM": ",".join((secret, *opts.env_from_secrets)),
           "CAPSTAN_TRIAL_LISTEN": f"{name}.{namespace}.svc:{opts.trial_port}"}
    if datasets:
        env["CAPSTAN_KUBE_DATASETS"] = ",".join(f"{m.claim}:{m.mount_path}:{'ro' if m.read_only else 'rw'}"
                                                for m in datasets)
    container = Container(name=CONTAINER, image=str(cluster.trial.job.image),
                          command=("capstan", "tune", "-f", f"{STUDY_DIR}/{STUDY_FILE}"), env=env,
                          secret_env=(SecretEnv(TRIAL_KEY, secret, TRIAL_KEY),),
                          env_from_secrets=opts.env_from_secrets,
                          resources=Resources(cpu=CONTROLLER_CPU, memory=TRIALS_CONTROLLER_MEMORY),
                          ports={_PORT_NAME: opts.trial_port}, working_dir=opts.working_dir)
    pod_labels = {**labels, CONTROLLER_LABEL: spec.name}
    home = ClaimMount(claim=state, mount_path=HOME_DIR, read_only=False)
    options = PodOptions(kueue=opts.kueue, labels=pod_labels, claims=check_mounts([home], path="datasets"),
                         config_maps=(ConfigMapMount(f"{spec.name}-study", STUDY_DIR),), service_account=name,
                         automount_token=True, run_as_user=opts.run_as_user, run_as_group=opts.run_as_user)
    try:
        template = pod_template(container, options)
    except InvalidParameterValue as exc:
        raise _fail("study", exc.message) from None
    job = _object("batch/v1", "Job", spec.name, namespace, dict(pod_labels))
    job["spec"] = controller_job_spec(opts, template)
    objects.append(job)
    return objects
