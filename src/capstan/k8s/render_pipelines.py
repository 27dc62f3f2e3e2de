"""Render pipeline steps to ``batch/v1`` Jobs and schedules to CronJobs. Pure.

The input is typed records (`StepJob`, `CronSchedule`), not the pipeline objects themselves, so this module stays
free of the DSL (which reads the clock and imports the composition root); `capstan.k8s.pipeline_jobs` builds the
records from a pipeline's DAG. Each step becomes one Job:

- a fan-out (a map over chunks or a list known before the run) is one indexed Job (``completionMode: Indexed``,
  ``completions`` items, ``parallelism`` from ``max_parallel``) whose pods read ``CHUNK_INDEX`` from the
  completion index and ``CHUNK_COUNT`` from the item count; retries count per index (``backoffLimitPerIndex``);
- ``backoffLimit`` is the step's retries, ``activeDeadlineSeconds`` its timeout (rounded up);
- the ``podFailurePolicy`` fails the Job at once on exit code 2 (a usage error retrying cannot fix) and does not
  count pods that a disruption (preemption, eviction, node drain) ended;
- ``ttlSecondsAfterFinished`` lets Kubernetes collect finished Jobs;
- with a queue, the Kueue labels, and ``suspend: true`` so that nothing starts before Kueue admits it.

The pod (`capstan.k8s.pods`, restricted profile) runs ``capstan worker run-step`` in the step's image; the
dependency order of the DAG is the order of the returned list and the ``capstan.dev/depends-on`` annotation.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL, workload_labels
from capstan.k8s.pods import ClaimMount, Container, PodOptions, Resources, SecretEnv, pod_template
from capstan.k8s.render_queues import KueueOptions, namespace_for
from capstan.queue.model import QueueConfig

CONTAINER: Final = "step"
"""The name of the step's container (the podFailurePolicy's exit-code rule names it)."""
USAGE_EXIT_CODE: Final = 2
"""The exit code that fails a Job without retries."""
DEPENDS_ON: Final = "capstan.dev/depends-on"
"""Annotation listing the Jobs (comma-separated names) that must succeed before this one starts."""
PIPELINE_LABEL: Final = "capstan.dev/pipeline"
STEP_LABEL: Final = "capstan.dev/step"
COMPLETION_INDEX_FIELD: Final = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
DEFAULT_IMAGE: Final = "capstan-runtime:latest"
"""The image a step without its own ``image`` runs in (the repository's runtime image)."""

_NAME_CHARS: Final = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class StepJob:
    """One step of a pipeline as a Job.

    ``node`` is the step's DAG node id, ``params`` the run's parameters as given (``KEY=VALUE`` text),
    ``depends_on`` the node ids it waits for; ``completions`` (None: a single pod) makes an indexed Job, with
    ``parallelism`` pods at once (None: all). ``timeout_s`` is the step's timeout. ``run_id`` (the pipeline run
    the pods report to) and ``code`` (a shipped code package, `capstan.pipelines.code_package`) become the worker's
    ``--run`` and ``--code``; the Kubernetes executor adds both itself, per attempt.
    """

    pipeline: str
    pipeline_ref: str
    node: str
    step: str
    params: Mapping[str, str] = field(default_factory=dict)
    image: str | None = None
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    timeout_s: float | None = None
    resources: Resources = field(default_factory=Resources)
    gpu_flavor: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    completions: int | None = None
    parallelism: int | None = None
    queue: str | None = None
    priority_class: str | None = None
    run_id: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A schedule of a pipeline: ``cron`` (five fields), the pipeline reference and its parameters."""

    name: str
    pipeline_ref: str
    cron: str
    params: Mapping[str, str] = field(default_factory=dict)
    catchup: bool = False


@dataclass(frozen=True, slots=True)
class JobOptions:
    """Cluster settings shared by every rendered Job.

    ``queue_config`` checks the queue and priority class of a step and gives the flavors its ``gpu_flavor``
    names (node affinity, tolerations, GPU resource); ``secret_env``/``env_from_secrets`` reach every pod by
    reference (artifact-store credentials); ``shm_bytes`` adds a ``/dev/shm`` of that size; ``claims`` mounts
    PersistentVolumeClaims (datasets, `capstan.k8s.render_datasets`) in every pod.
    """

    project: str = "default"
    image: str = DEFAULT_IMAGE
    ttl_seconds: int = 3600
    queue_config: QueueConfig | None = None
    kueue: KueueOptions = field(default_factory=KueueOptions)
    secret_env: tuple[SecretEnv, ...] = ()
    env_from_secrets: tuple[str, ...] = ()
    shm_bytes: int = 0
    service_account: str | None = None
    run_as_user: int = 1000
    claims: tuple[ClaimMount, ...] = ()


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def job_name(pipeline: str, node: str) -> str:
    """A valid Job name (a DNS label of at most 63 characters) for ``node`` of ``pipeline``; names that had to be
    changed or cut carry a short hash, so two nodes never share one."""
    return dns_label(f"{pipeline}-{node}")


def dns_label(text: str) -> str:
    """``text`` as a DNS label (at most 63 lowercase letters, digits and '-'); a name that had to be changed or cut
    ends in a short hash of ``text``, so two different texts never share one."""
    raw = text.lower()
    name = _NAME_CHARS.sub("-", raw).strip("-")
    if name == raw and len(name) <= 63:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def worker_command(step: StepJob) -> tuple[str, ...]:
    """The command the step's pod runs: the Capstan worker fetching the step's code and inputs."""
    args = ["capstan", "worker", "run-step", "--pipeline", step.pipeline_ref, "--node", step.node]
    for key, value in step.params.items():
        args += ["--param", f"{key}={value}"]
    if step.run_id is not None:
        args += ["--run", step.run_id]
    if step.code is not None:
        args += ["--code", step.code]
    return tuple(args)


def _labels(step: StepJob, opts: JobOptions, path: str) -> dict[str, str]:
    labels = {"app.kubernetes.io/managed-by": "capstan",
              PIPELINE_LABEL: _NAME_CHARS.sub("-", step.pipeline.lower()).strip("-")[:63].strip("-"),
              STEP_LABEL: _NAME_CHARS.sub("-", step.step.lower()).strip("-")[:63].strip("-")}
    if step.queue is None:
        if step.priority_class is not None:
            raise _fail(f"{path}.priority_class", "a priority class needs a queue")
        return labels
    if opts.queue_config is not None:
        try:
            labels.update(workload_labels(opts.queue_config, step.queue, step.priority_class))
        except InvalidParameterValue as exc:
            raise _fail(path, exc.message) from None
    else:
        labels[QUEUE_NAME_LABEL] = step.queue
        if step.priority_class is not None:
            labels[PRIORITY_CLASS_LABEL] = step.priority_class
    return labels


def _pod_options(step: StepJob, opts: JobOptions, labels: Mapping[str, str], path: str) -> PodOptions:
    flavor = None
    if step.gpu_flavor is not None and opts.queue_config is not None:
        flavor = next((f for f in opts.queue_config.flavors if f.name == step.gpu_flavor), None)
        if flavor is None:
            raise _fail(f"{path}.gpu_flavor", f"flavor {step.gpu_flavor!r} is not in the queue configuration")
    return PodOptions(flavor=flavor, kueue=opts.kueue, labels=labels, shm_bytes=opts.shm_bytes,
                      service_account=opts.service_account, run_as_user=opts.run_as_user,
                      run_as_group=opts.run_as_user, claims=opts.claims)


def _failure_policy() -> dict[str, Any]:
    return {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": [USAGE_EXIT_CODE]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}


def _check(step: StepJob, path: str) -> None:
    if step.retries < 0:
        raise _fail(f"{path}.retries", "must not be negative")
    if step.timeout_s is not None and step.timeout_s <= 0:
        raise _fail(f"{path}.timeout", "must be positive")
    if step.completions is not None and step.completions < 1:
        raise _fail(f"{path}.completions", "an indexed Job needs at least one completion")
    if step.parallelism is not None and step.parallelism < 1:
        raise _fail(f"{path}.max_parallel", "must be at least 1")


def render_step_job(step: StepJob, options: JobOptions | None = None,
                    names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Job for ``step``. ``names`` maps node ids to Job names (for the dependency annotation; by default
    `job_name`). Raises `InvalidParameterValue` naming the step and field for a setting with no valid rendering."""
    opts = options if options is not None else JobOptions()
    path = f"steps[{step.node}]"
    _check(step, path)
    namespace = namespace_for(opts.project)
    labels = _labels(step, opts, path)
    env = dict(step.env)
    field_env: dict[str, str] = {}
    if step.completions is not None:
        env["CHUNK_COUNT"] = str(step.completions)
        field_env["CHUNK_INDEX"] = COMPLETION_INDEX_FIELD
    container = Container(name=CONTAINER, image=step.image or opts.image, command=worker_command(step), env=env,
                          field_env=field_env, secret_env=opts.secret_env, env_from_secrets=opts.env_from_secrets,
                          resources=step.resources)
    try:
        template = pod_template(container, _pod_options(step, opts, labels, path))
    except InvalidParameterValue as exc:
        raise _fail(path, exc.message) from None
    spec: dict[str, Any] = {"ttlSecondsAfterFinished": opts.ttl_seconds, "podFailurePolicy": _failure_policy()}
    if step.completions is not None:
        spec.update(completionMode="Indexed", completions=step.completions,
                    parallelism=min(step.parallelism or step.completions, step.completions),
                    backoffLimitPerIndex=step.retries)
    else:
        spec["backoffLimit"] = step.retries
    if step.timeout_s is not None:
        spec["activeDeadlineSeconds"] = math.ceil(step.timeout_s)
    if QUEUE_NAME_LABEL in labels:
        spec["suspend"] = True
    spec["template"] = template
    name_of = names or {}
    metadata: dict[str, Any] = {"name": name_of.get(step.node) or job_name(step.pipeline, step.node),
                                "namespace": namespace, "labels": labels}
    if step.depends_on:
        metadata["annotations"] = {DEPENDS_ON: ",".join(
            name_of.get(d) or job_name(step.pipeline, d) for d in step.depends_on)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def render_pipeline_jobs(steps: Sequence[StepJob], options: JobOptions | None = None) -> list[dict[str, Any]]:
    """One Job per step, in DAG order (every step after the steps it depends on). Raises `InvalidParameterValue`
    for a dependency on a step not in ``steps``, a cycle, or two steps whose Job names collide."""
    by_node = {s.node: s for s in steps}
    names = {s.node: job_name(s.pipeline, s.node) for s in steps}
    if len(set(names.values())) != len(names):
        raise _fail("steps", "two steps map to the same Job name")
    order: list[StepJob] = []
    done: set[str] = set()
    pending = list(steps)
    while pending:
        ready = [s for s in pending if all(d in done for d in s.depends_on)]
        if not ready:
            missing = sorted({d for s in pending for d in s.depends_on if d not in by_node})
            if missing:
                raise _fail("steps", f"a step depends on {missing[0]!r}, which is not in the pipeline")
            raise _fail("steps", f"the dependencies form a cycle through {pending[0].node!r}")
        for s in ready:
            order.append(s)
            done.add(s.node)
        pending = [s for s in pending if s.node not in done]
    return [render_step_job(s, options, names) for s in order]


def render_cron_job(schedule: CronSchedule, options: JobOptions | None = None) -> dict[str, Any]:
    """A CronJob that starts a run of the scheduled pipeline (``capstan run REF --param K=V``) at each slot.
    Missed slots are skipped unless the schedule catches up (``startingDeadlineSeconds`` unset), and runs never
    overlap (``concurrencyPolicy: Forbid``)."""
    opts = options if options is not None else JobOptions()
    path = f"schedules[{schedule.name}]"
    if len(schedule.cron.split()) != 5:
        raise _fail(f"{path}.cron", f"{schedule.cron!r} is not a five-field cron expression")
    name = job_name("schedule", schedule.name)
    if len(name) > 52:  # the CronJob controller appends an 11-character suffix to name its Jobs
        name = f"{name[:43].rstrip('-')}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    args = ["capstan", "run", schedule.pipeline_ref]
    for key, value in schedule.params.items():
        args += ["--param", f"{key}={value}"]
    labels = {"app.kubernetes.io/managed-by": "capstan", "capstan.dev/schedule": name}
    container = Container(name=CONTAINER, image=opts.image, command=tuple(args), secret_env=opts.secret_env,
                          env_from_secrets=opts.env_from_secrets, resources=Resources(cpu=100, memory=256 * 2**20))
    try:
        template = pod_template(container, PodOptions(labels=labels, service_account=opts.service_account,
                                                      run_as_user=opts.run_as_user, run_as_group=opts.run_as_user,
                                                      claims=opts.claims))
    except InvalidParameterValue as exc:
        raise _fail(path, exc.message) from None
    job_spec = {"backoffLimit": 0, "ttlSecondsAfterFinished": opts.ttl_seconds, "template": template}
    spec: dict[str, Any] = {"schedule": schedule.cron, "timeZone": "Etc/UTC", "concurrencyPolicy": "Forbid",
                            "jobTemplate": {"metadata": {"labels": labels}, "spec": job_spec}}
    if not schedule.catchup:
        spec["startingDeadlineSeconds"] = 300
    return {"apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": name, "namespace": namespace_for(opts.project), "labels": labels}, "spec": spec}
