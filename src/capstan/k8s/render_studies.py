"""Render a hyperparameter study (`capstan.tuning.spec.StudySpec`) to Kubernetes manifests. Pure.

A study is adaptive: TPE and CMA-ES sample each trial from the trials that ended before it, the pruners stop trials
from the values other trials reported, and ``max_failed_trials`` ends the study early. All of that lives in the
study's controller (`capstan.tuning.controller`), and trials report to it over a local socket. So the cluster
runs the controller itself, ``capstan tune -f``, exactly as it runs locally (docs/kubernetes-training.md,
decision 0717):

- a ``ConfigMap`` ``<study>-study`` holding the study file, with ``working_dir`` set to where the code is in the
  image, and without ``queue``, ``priority`` and ``gpu_flavor``: those are the cluster's business (the labels and
  the placement of the Job below); inside the pod the trials go through the pod's own default queue, which holds
  at most ``parallel_trials`` trials as locally;
- a ``PersistentVolumeClaim`` ``<study>-state`` (``ReadWriteOnce``) for ``CAPSTAN_HOME``: the study's trials,
  runs and logs survive the pod, unless ``state_claim`` names an existing claim (or the metadata store is a
  PostgreSQL database that ``env_from_secrets`` points ``CAPSTAN_DB_URL`` at; the claim still holds the logs);
- an indexed ``batch/v1`` Job ``<study>`` of one completion. Its pod's hostname is ``<study>-0`` every time, and
  ``capstan tune`` runs as the container's process 1, so a pod that replaces a dead one (``backoffLimit`` =
  ``restarts``) is the same controller (``host:pid``) to the study store and **resumes** the study: finished
  trials are kept, the interrupted ones re-run once. Disruptions (preemption, eviction, drains) do not count as
  restarts. With a queue the Job carries the Kueue labels and ``suspend: true``:
  Kueue admits the study as one workload.

The pod asks for what ``parallel_trials`` trials need at once plus the controller's share: a function or script
trial's ``resources``, or a training-job trial's ``workers`` times its per-worker CPU, memory and GPUs (its
workers run as local processes in the pod, as ``capstan tune`` starts them on one machine). GPUs are whole devices
(a total fraction is rounded up; the trials share them through the pod's queue). The pod passes the restricted
profile (`capstan.k8s.pods`).

**Training-job trials run as their own Jobs** (decision 0745), unless ``trials_in_pod`` keeps the mode above: the
controller pod is small (CPU only) and runs ``capstan tune`` with the ``kubernetes`` backend, so each trial's job
is an indexed Job and a headless Service of its own (`capstan.k8s.training_launcher`), labelled with the study and
trial number (`trial_labels`) and, with a queue, created suspended for Kueue (``CAPSTAN_KUBE_ADMISSION=kueue``;
without one ``none``: the scheduler alone). Trials report to the controller over TCP (``CAPSTAN_TRIAL_LISTEN``)
at the Service ``<study>-controller``, proving a key that both sides read from the Secret ``trial_key_secret``
(key ``CAPSTAN_TRIAL_KEY``; never rendered, `TRIAL_KEY`). Rendered beside the ConfigMap and claim: a
ServiceAccount with a Role and RoleBinding of exactly the verbs the controller uses (`controller_rules`), that
Service, and NetworkPolicies letting the trials reach the controller's port and the controller reach the API server.
"""


from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import yaml

from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL, workload_labels
from capstan.k8s.pods import ClaimMount, ConfigMapMount, Container, PodOptions, Resources, pod_template
from capstan.k8s.render_datasets import Dataset, check_mounts, render_dataset
from capstan.k8s.render_queues import KueueOptions, namespace_for
from capstan.queue.model import QueueConfig
from capstan.resources.quantity import MILLI
from capstan.tuning.spec import JobTrial, StudySpec

STUDY_FILE: Final = "study.yaml"
STUDY_DIR: Final = "/etc/capstan/study"
HOME_DIR: Final = "/var/lib/capstan"
"""Where the state claim is mounted: the controller's ``CAPSTAN_HOME``."""
CONTAINER: Final = "controller"
STUDY_LABEL: Final = "capstan.dev/study"
CONTROLLER_CPU: Final = 500
"""Milli-CPU the controller itself gets beside its trials."""
CONTROLLER_MEMORY: Final = 512 * 2**20
TRIAL_LABEL: Final = "capstan.dev/trial"
"""The label a trial's Job, pods and Service carry beside `STUDY_LABEL`: the trial's number."""
CONTROLLER_LABEL: Final = "capstan.dev/study-controller"
"""The label of the controller pod of a study whose trials are Jobs (its Service and NetworkPolicy select it)."""
TRIAL_KEY: Final = "CAPSTAN_TRIAL_KEY"
"""The key of the trial-key Secret (hex, e.g. ``openssl rand -hex 32``), read by the controller and the trials."""
TRIALS_CONTROLLER_MEMORY: Final = 2**30
"""Memory of a controller whose trials are Jobs (it follows their Jobs, pods and logs)."""
_TRIAL_ENV: Final = ("CAPSTAN_STUDY", "CAPSTAN_TRIAL_NUMBER")
_LABEL_VALUE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class StudyRenderOptions:
    """How a study meets a cluster.

    - ``image``: holds Capstan and the trials' code (required: here or the training-job trial's ``image``);
      ``working_dir``: where that code is in the image (the study's scripts and modules are found there).
    - ``project``: the namespace (and ``CAPSTAN_PROJECT``); ``queue_config``: the study's queue and priority are
      checked against it, and its flavors place the pod for a ``gpu_flavor``.
    - ``state_claim``: an existing claim for ``CAPSTAN_HOME``, else ``<study>-state`` of ``state_bytes`` is
      rendered (``storage_class``, none: the cluster's default).
    - ``env_from_secrets``: Secrets whose keys the controller sees (``CAPSTAN_DB_URL``, artifact-store
      credentials); ``datasets``: claims mounted in the pod (trial data); ``restarts``: the Job's
      ``backoffLimit``; ``ttl_seconds``: ``ttlSecondsAfterFinished``; ``shm_bytes``: ``/dev/shm`` size.
    - Training-job trials (see the module docstring): ``trials_in_pod`` runs them inside the controller pod
      instead of as Jobs; ``trial_key_secret`` names the Secret holding `TRIAL_KEY` (default
      ``<study>-trial-key``); ``trial_port`` is the controller's report port; ``api_server_ports`` the ports the
      controller's NetworkPolicy lets it reach the Kubernetes API server on.
    """

    image: str | None = None
    working_dir: str = "/app"
    project: str = "default"
    queue_config: QueueConfig | None = None
    kueue: KueueOptions = field(default_factory=KueueOptions)
    state_claim: str | None = None
    state_bytes: int = 2**30
    storage_class: str | None = None
    env_from_secrets: tuple[str, ...] = ()
    datasets: tuple[ClaimMount, ...] = ()
    restarts: int = 3
    ttl_seconds: int = 86400
    shm_bytes: int = 2**30
    run_as_user: int = 1000
    trials_in_pod: bool = False
    trial_key_secret: str | None = None
    trial_port: int = 7077
    api_server_ports: tuple[int, ...] = (443, 6443)


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def pod_study(spec: StudySpec, working_dir: str) -> StudySpec:
    """The study as the controller pod runs it: ``working_dir`` in the image; no queue, priority or GPU flavor
    (the pod's Job carries them; inside the pod every trial uses the pod's default queue and GPUs)."""
    trial = spec.trial
    if isinstance(trial, JobTrial):
        trial = JobTrial(dataclasses.replace(trial.job, queue=None, priority=None, gpu_flavor=None,
                                             working_dir=None))
    return dataclasses.replace(spec, queue=None, priority=None, trial=trial, working_dir=working_dir,
                               resources=dataclasses.replace(spec.resources, gpu_flavor=None))


def study_file(spec: StudySpec, working_dir: str) -> str:
    """The YAML the controller pod reads with ``capstan tune -f`` (see `pod_study`)."""
    return yaml.safe_dump(pod_study(spec, working_dir).to_dict(), sort_keys=False)


def pod_resources(spec: StudySpec) -> Resources:
    """What ``parallel_trials`` trials need at once, plus the controller's share."""
    trial = spec.trial
    if isinstance(trial, JobTrial):
        job = trial.job
        cpu, memory, gpus = job.cpu * job.workers, job.memory * job.workers, job.gpus * job.workers
    else:
        cpu, memory, gpus = spec.resources.cpu, spec.resources.memory, spec.resources.gpus
    n = spec.parallel_trials
    return Resources(cpu=round(cpu * n * MILLI) + CONTROLLER_CPU, memory=memory * n + CONTROLLER_MEMORY,
                     gpu=math.ceil(gpus * n - 1e-9) * MILLI)


def _gpu_flavor(spec: StudySpec) -> str | None:
    return spec.trial.job.gpu_flavor if isinstance(spec.trial, JobTrial) else spec.resources.gpu_flavor


def _labels(spec: StudySpec, opts: StudyRenderOptions) -> dict[str, str]:
    labels = {"app.kubernetes.io/managed-by": "capstan", STUDY_LABEL: spec.name}
    if spec.queue is None:
        if spec.priority is not None:
            raise _fail("study.priority", "a priority class needs a queue")
        return labels
    if opts.queue_config is not None:
        try:
            labels.update(workload_labels(opts.queue_config, spec.queue, spec.priority))
        except InvalidParameterValue as exc:
            raise _fail("study", exc.message) from None
        return labels
    labels[QUEUE_NAME_LABEL] = spec.queue
    if spec.priority is not None:
        labels[PRIORITY_CLASS_LABEL] = spec.priority
    return labels


def _pod_options(spec: StudySpec, opts: StudyRenderOptions, labels: Mapping[str, str],
                 state: str) -> PodOptions:
    flavor = None
    name = _gpu_flavor(spec)
    if name is not None:
        known = {f.name: f for f in opts.queue_config.flavors} if opts.queue_config is not None else {}
        if name not in known:
            raise _fail("study.gpu_flavor", f"flavor {name!r} is not in the queue configuration, which places the "
                                            "pod (give the configuration that defines it)")
        flavor = known[name]
    home = ClaimMount(claim=state, mount_path=HOME_DIR, read_only=False)
    claims = check_mounts([home, *opts.datasets], path="datasets")
    return PodOptions(flavor=flavor, kueue=opts.kueue, labels=labels, shm_bytes=opts.shm_bytes, claims=claims,
                      config_maps=(ConfigMapMount(f"{spec.name}-study", STUDY_DIR),),
                      run_as_user=opts.run_as_user, run_as_group=opts.run_as_user)


def _image(spec: StudySpec, opts: StudyRenderOptions) -> str:
    image = opts.image or (spec.trial.job.image if isinstance(spec.trial, JobTrial) else None)
    if not image:
        raise _fail("study.image", "a Kubernetes rendering needs a container image with Capstan and the trials' "
                                   "code (--image)")
    return image


def render_study(spec: StudySpec, options: StudyRenderOptions | None = None) -> list[dict[str, Any]]:
    """The ConfigMap, the state claim (unless ``state_claim`` names one) and the controller Job of ``spec``, in
    the order they can be applied; for training-job trials (unless ``trials_in_pod``) also the controller's
    ServiceAccount, Role, RoleBinding, Service and NetworkPolicies (`render_trial_jobs_study`). Raises
    `InvalidParameterValue` naming the field: no image, a relative ``working_dir``, a bad namespace, a queue or
    priority class or GPU flavor the configuration lacks, a GPU request with no whole-GPU rendering, or clashing
    mount points."""
    opts = options if options is not None else StudyRenderOptions()
    if not opts.working_dir.startswith("/"):
        raise _fail("working_dir", f"{opts.working_dir!r} is not an absolute path in the image")
    if opts.restarts < 0:
        raise _fail("restarts", "must not be negative")
    if isinstance(spec.trial, JobTrial) and not opts.trials_in_pod:
        from capstan.k8s.render_study_trials import render_trial_jobs_study

        return render_trial_jobs_study(spec, opts)
    namespace = namespace_for(opts.project)
    labels = _labels(spec, opts)
    objects: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"{spec.name}-study", "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "capstan", STUDY_LABEL: spec.name}},
        "data": {STUDY_FILE: study_file(spec, opts.working_dir)}}]
    state = opts.state_claim
    if state is None:
        state = f"{spec.name}-state"
        objects.append(render_dataset(Dataset(name=state, size_bytes=opts.state_bytes, access="read-write-once",
                                              project=opts.project, storage_class=opts.storage_class)))
    container = Container(name=CONTAINER, image=_image(spec, opts),
                          command=("capstan", "tune", "-f", f"{STUDY_DIR}/{STUDY_FILE}"),
                          # HOME on the writable /tmp: the root filesystem is read-only, and libraries cache there
                          env={"CAPSTAN_HOME": HOME_DIR, "CAPSTAN_PROJECT": opts.project, "HOME": "/tmp"},
                          env_from_secrets=opts.env_from_secrets, resources=pod_resources(spec),
                          working_dir=opts.working_dir)
    pod_options = _pod_options(spec, opts, labels, state)
    try:
        template = pod_template(container, pod_options)
    except InvalidParameterValue as exc:
        raise _fail("study", exc.message) from None
    job_spec = controller_job_spec(opts, template, suspend=QUEUE_NAME_LABEL in labels)
    objects.append({"apiVersion": "batch/v1", "kind": "Job",
                    "metadata": {"name": spec.name, "namespace": namespace, "labels": labels}, "spec": job_spec})
    return objects


def controller_job_spec(opts: StudyRenderOptions, template: dict[str, Any], *, suspend: bool = False
                        ) -> dict[str, Any]:
    """The spec of a study controller's Job: one indexed completion (its pod is ``<study>-0`` every time, so a
    replacement resumes the study), ``restarts`` as the back-off limit, disruptions not counted; ``suspend`` for
    Kueue to admit it."""
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed", "completions": 1, "parallelism": 1, "backoffLimit": opts.restarts,
        "ttlSecondsAfterFinished": opts.ttl_seconds,
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}}
    if suspend:
        job_spec["suspend"] = True
    job_spec["template"] = template
    return job_spec


def trial_labels(env: Mapping[str, str]) -> dict[str, str]:
    """The labels of a study trial's cluster objects, from its job's environment (``CAPSTAN_STUDY`` and
    ``CAPSTAN_TRIAL_NUMBER``, which the study's controller sets): `STUDY_LABEL` and `TRIAL_LABEL`; none for a job
    that is not a trial (or whose values are not label values)."""
    study, number = (env.get(name, "") for name in _TRIAL_ENV)
    if not number.isdigit() or len(study) > 63 or not _LABEL_VALUE.match(study):
        return {}
    return {STUDY_LABEL: study, TRIAL_LABEL: str(int(number))}
