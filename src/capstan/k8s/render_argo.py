"""Export a whole pipeline as one Argo Workflows ``Workflow`` (``argoproj.io/v1alpha1``) with a DAG template. Pure.

The native rendering (`capstan.k8s.render_pipelines`) stays the one source of each step's pod: every step is first
rendered as its ``batch/v1`` Job, and its Argo container template is taken from that Job's pod template, so image,
``capstan worker run-step`` command, environment, resources, flavor placement, volumes (``/tmp``, ``/dev/shm``,
datasets) and the restricted security contexts are the same in both formats (docs/kubernetes-pipelines.md,
decision 0715). What changes:

- **Order.** One DAG task per step, named like its Job, with ``dependencies`` from the DAG; Argo starts a task when
  the tasks it depends on succeeded (the native Jobs only carry a ``capstan.dev/depends-on`` annotation).
- **Fan-out.** An indexed Job (a map over chunks or a known list) becomes a task with ``withSequence`` of
  ``completions`` items; each item's pod gets ``CHUNK_INDEX`` from the item (``{{item}}`` through the template's
  ``chunk-index`` input) and ``CHUNK_COUNT`` as before. When the Job's ``parallelism`` is below its
  ``completions``, the task runs inside a one-task DAG template with ``parallelism`` set, which bounds that fan-out
  alone.
- **Retries.** ``retryStrategy.limit`` = the step's retries, per pod (per item for a fan-out, like
  ``backoffLimitPerIndex``), ``retryPolicy: Always`` with the expression ``lastRetry.exitCode != "2"``: exit code 2
  (a usage error) is not retried, as the Job's ``podFailurePolicy`` says. Argo has no way to leave a disrupted
  pod uncounted: a preempted or evicted pod uses up a retry, where the native Job ignores it.
- **Timeout.** ``activeDeadlineSeconds`` on the container template: per pod attempt, where the native Job's bounds
  the Job as a whole.
- **Cleanup.** ``ttlStrategy.secondsAfterCompletion`` = the Jobs' ``ttlSecondsAfterFinished``.
- **Queue.** The pods carry the Kueue labels (``kueue.x-k8s.io/queue-name``); with Kueue's ``pod`` integration
  enabled each pod is admitted as a workload (Kueue's documented way to run Argo Workflows). Nothing is
  suspended: Argo has no suspended-pod flag for Kueue to lift.
- **Executor.** Pods get no service-account token (``automountServiceAccountToken: false``); Argo's own ``wait``
  container then uses the token of ``executor.serviceAccountName``, whose ServiceAccount, Role (create and patch
  ``workflowtaskresults`` only), RoleBinding and token Secret (``<account>.service-account-token``, the name Argo
  looks the token up by; Kubernetes fills it in) are rendered beside the Workflow.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from capstan.errors import InvalidParameterValue
from capstan.k8s.render_pipelines import (
    PIPELINE_LABEL,
    JobOptions,
    StepJob,
    dns_label,
    job_name,
    render_pipeline_jobs,
)
from capstan.k8s.render_queues import namespace_for

ARGO_API: Final = "argoproj.io/v1alpha1"
ENTRYPOINT: Final = "main"
"""The name of the Workflow's DAG template."""
CHUNK_PARAM: Final = "chunk-index"
"""The input parameter a fan-out item's template reads ``CHUNK_INDEX`` from."""
RETRY_EXPRESSION: Final = 'lastRetry.exitCode != "2"'
"""Retry unless the last attempt exited with code 2 (the native Job's ``FailJob`` rule)."""
EXECUTOR_ACCOUNT: Final = "capstan-argo-executor"
# What Argo's executor (the ``wait`` container) needs from the API server since Argo 3.4.
_EXECUTOR_RULES: Final = ({"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                           "verbs": ["create", "patch"]},)
# Pod-spec fields of a native step Job and what a container template has for each (None: the Workflow's spec).
_POD_FIELDS: Final[Mapping[str, str | None]] = {
    "securityContext": "securityContext", "volumes": "volumes", "affinity": "affinity",
    "tolerations": "tolerations", "automountServiceAccountToken": None, "serviceAccountName": None,
    "containers": None, "restartPolicy": None}


@dataclass(frozen=True, slots=True)
class ArgoOptions:
    """Argo settings: ``executor_account``, the ServiceAccount whose token Argo's executor uses (rendered with its
    Role, RoleBinding and token Secret)."""

    executor_account: str = EXECUTOR_ACCOUNT


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _container(pod_spec: Mapping[str, Any], indexed: bool) -> dict[str, Any]:
    container: dict[str, Any] = copy.deepcopy(pod_spec["containers"][0])
    del container["name"]  # Argo names a container template's container "main" itself
    if indexed:
        for item in container.get("env", []):
            if item["name"] == "CHUNK_INDEX":
                item.pop("valueFrom")
                item["value"] = f"{{{{inputs.parameters.{CHUNK_PARAM}}}}}"
    return container


def _template(step: StepJob, job: Mapping[str, Any]) -> dict[str, Any]:
    """The container template of ``step`` from its native ``job``."""
    pod = job["spec"]["template"]
    pod_spec = pod["spec"]
    unknown = sorted(set(pod_spec) - set(_POD_FIELDS))
    if unknown:  # a pod field added to the native rendering must get an Argo mapping, not vanish
        raise _fail(f"steps[{step.node}]", f"pod field {unknown[0]!r} has no Argo template equivalent")
    if pod_spec.get("restartPolicy", "Never") != "Never":
        raise _fail(f"steps[{step.node}]", "Argo runs step pods with restartPolicy Never")
    indexed = step.completions is not None
    template: dict[str, Any] = {"name": job["metadata"]["name"], "metadata": copy.deepcopy(pod["metadata"])}
    if indexed:
        template["inputs"] = {"parameters": [{"name": CHUNK_PARAM}]}
    template["container"] = _container(pod_spec, indexed)
    for key, target in _POD_FIELDS.items():
        if target is not None and key in pod_spec:
            template[target] = copy.deepcopy(pod_spec[key])
    if step.retries:
        template["retryStrategy"] = {"limit": step.retries, "retryPolicy": "Always",
                                     "expression": RETRY_EXPRESSION}
    if "activeDeadlineSeconds" in job["spec"]:
        template["activeDeadlineSeconds"] = job["spec"]["activeDeadlineSeconds"]
    return template


def _fan_out(name: str, step: StepJob) -> dict[str, Any]:
    assert step.completions is not None
    return {"withSequence": {"count": str(step.completions)},
            "arguments": {"parameters": [{"name": CHUNK_PARAM, "value": "{{item}}"}]}, "template": name}


def _task(step: StepJob, job: Mapping[str, Any], names: Mapping[str, str],
          templates: list[dict[str, Any]]) -> dict[str, Any]:
    """The DAG task of ``step``; adds its templates to ``templates``."""
    name = job["metadata"]["name"]
    templates.append(_template(step, job))
    task: dict[str, Any] = {"name": name}
    if step.depends_on:
        task["dependencies"] = [names[d] for d in step.depends_on]
    if step.completions is None:
        task["template"] = name
        return task
    if job["spec"]["parallelism"] >= step.completions:
        task.update(_fan_out(name, step))
        return task
    # Argo bounds parallelism per template, so a bounded fan-out gets a DAG template of its own.
    wrapper = f"{name[:56].rstrip('-')}-fanout"
    templates.append({"name": wrapper, "parallelism": job["spec"]["parallelism"],
                      "dag": {"tasks": [{"name": "chunk", **_fan_out(name, step)}]}})
    task["template"] = wrapper
    return task


def _executor_rbac(namespace: str, account: str) -> list[dict[str, Any]]:
    meta = {"name": account, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "capstan"}}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta),
         "rules": [dict(rule) for rule in _EXECUTOR_RULES]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": account},
         "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]},
        # Argo finds the executor's token in this Secret by its name; Kubernetes' token controller fills it in.
        {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
         "metadata": {**meta, "name": f"{account}.service-account-token",
                      "annotations": {"kubernetes.io/service-account.name": account}}},
    ]


def render_workflow(steps: Sequence[StepJob], options: JobOptions | None = None,
                    argo: ArgoOptions | None = None) -> list[dict[str, Any]]:
    """The executor's ServiceAccount, Role, RoleBinding and token Secret, then one ``Workflow`` running ``steps``
    (one pipeline) as a DAG. Raises `InvalidParameterValue` for anything the native rendering refuses (naming the
    step and field), for no steps, steps of several pipelines, or template names that collide."""
    opts = options if options is not None else JobOptions()
    settings = argo if argo is not None else ArgoOptions()
    if not steps:
        raise _fail("steps", "a Workflow needs at least one step")
    pipelines = sorted({s.pipeline for s in steps})
    if len(pipelines) > 1:
        raise _fail("steps", f"the steps belong to several pipelines ({', '.join(pipelines)})")
    account = dns_label(settings.executor_account)
    if account != settings.executor_account:
        raise _fail("executor_account", f"{settings.executor_account!r} is not a valid ServiceAccount name")
    jobs = render_pipeline_jobs(steps, opts)
    by_name = {job["metadata"]["name"]: job for job in jobs}
    names = {s.node: job_name(s.pipeline, s.node) for s in steps}
    templates: list[dict[str, Any]] = []
    tasks = [_task(s, by_name[names[s.node]], names, templates) for s in steps]
    template_names = [ENTRYPOINT, *(t["name"] for t in templates)]
    if len(set(template_names)) != len(template_names):
        raise _fail("steps", "two steps map to the same Argo template name")
    namespace = namespace_for(opts.project)
    spec: dict[str, Any] = {"entrypoint": ENTRYPOINT,
                            "templates": [{"name": ENTRYPOINT, "dag": {"tasks": tasks}}, *templates],
                            "automountServiceAccountToken": False, "executor": {"serviceAccountName": account},
                            "ttlStrategy": {"secondsAfterCompletion": opts.ttl_seconds}}
    if opts.service_account:
        spec["serviceAccountName"] = opts.service_account
    labels = {"app.kubernetes.io/managed-by": "capstan", PIPELINE_LABEL: jobs[0]["metadata"]["labels"][PIPELINE_LABEL]}
    workflow = {"apiVersion": ARGO_API, "kind": "Workflow",
                "metadata": {"name": dns_label(pipelines[0]), "namespace": namespace, "labels": labels},
                "spec": spec}
    return [*_executor_rbac(namespace, account), workflow]

