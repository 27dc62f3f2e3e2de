"""Render a training job (`capstan.training.spec.TrainingJobSpec`) to Kubernetes manifests. Pure.

``render_training(spec, options)`` returns manifest dicts in the format ``options.format`` names
(docs/kubernetes-training.md, decision 0709):

- ``native``: a headless `Service` for the rendezvous and an indexed ``batch/v1`` `Job` (``completions`` =
  ``parallelism`` = ``workers``). Pod ``i`` is ``<job>-i.<job>`` in DNS (the pod template's ``subdomain`` is the
  Service), so ``MASTER_ADDR`` is ``<job>-0.<job>``; ``GROUP_RANK`` comes from the completion index. With
  ``min_workers`` (partial admission) the Job carries Kueue's ``job-min-parallelism`` annotation (and
  ``job-completions-equal-parallelism``, so that Kueue lowers ``completions`` with ``parallelism``), and every pod
  runs ``torchrun --nnodes=MIN:MAX`` with a ``c10d`` rendezvous on index 0: the pods Kueue admitted find each
  other, and torchrun sets ``WORLD_SIZE`` and the ranks from how many came.
- ``pytorchjob``: a Kubeflow ``PyTorchJob`` (``kubeflow.org/v1``): one Master and ``workers - 1`` Workers; the
  training operator sets the rank variables.
- ``trainjob``: a Kubeflow Trainer ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``) on a named runtime, with the
  restricted security context, ``/dev/shm``, affinity and tolerations as a runtime patch.

Every pod template comes from `capstan.k8s.pods.pod_template`, so it passes the Pod Security restricted profile.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from capstan.errors import InvalidParameterValue
from capstan.k8s.labels import PRIORITY_CLASS_LABEL, QUEUE_NAME_LABEL, workload_labels
from capstan.k8s.pods import ClaimMount, Container, PodOptions, Resources, pod_template
from capstan.k8s.render_queues import KueueOptions, namespace_for
from capstan.queue.model import QueueConfig, ResourceFlavor, Taint
from capstan.resources.quantity import MILLI
from capstan.training.env import capstan_env
from capstan.training.spec import TrainingJobSpec

TrainingFormat = Literal["native", "pytorchjob", "trainjob"]
FORMATS: Final = ("native", "pytorchjob", "trainjob")
"""The formats `render_training` writes."""
COMPLETION_INDEX_FIELD: Final = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
"""The downward-API field of an indexed Job pod's completion index."""
JOB_NAME_LABEL: Final = "batch.kubernetes.io/job-name"
"""The label the Job controller puts on its pods (the headless Service selects them by it)."""
PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
"""The node label (from NVIDIA GPU feature discovery) a GPU flavor's affinity matches by default."""
GPU_TAINT: Final = "nvidia.com/gpu"
"""The taint GPU node pools commonly carry; GPU pods tolerate it."""
PYTORCHJOB_API: Final = "kubeflow.org/v1"
TRAINJOB_API: Final = "trainer.kubeflow.org/v1alpha1"
PYTORCH_CONTAINER: Final = "pytorch"
"""The container name the training operator looks for in a PyTorchJob."""
TRAINER_NODE: Final = "node"
"""The replicated job and container name of the trainer nodes in Kubeflow Trainer's torch runtimes."""
PATCH_MANAGER: Final = "capstan.dev/renderer"
MIN_PARALLELISM_ANNOTATION: Final = "kueue.x-k8s.io/job-min-parallelism"
"""Kueue's partial admission of a batch/v1 Job: the fewest pods (``parallelism``) it may be admitted with."""
COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION: Final = "kueue.x-k8s.io/job-completions-equal-parallelism"
"""Asks Kueue to set ``completions`` to the admitted ``parallelism`` too (an indexed Job of N workers)."""
_SECRET_NAME: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@dataclass(frozen=True, slots=True)
class TrainingRenderOptions:
    """How a training job meets a cluster.

    - ``format``: ``native``, ``pytorchjob`` or ``trainjob``; ``namespace``: the objects' namespace (none: the
      one they are applied to); ``image``: the container image, else the spec's ``image`` (one is required).
    - ``master_port``: the rendezvous port of rank 0; ``shm_bytes``: size of the memory-backed ``/dev/shm``.
    - ``flavors``: known GPU flavors by name (a queue configuration's); a ``gpu_flavor`` not among them becomes a
      flavor with node label ``product_label`` = ``gpu_products.get(flavor, flavor)`` and the ``nvidia.com/gpu``
      taint; ``kueue`` names the GPU resources.
    - ``queue_config``: when given, the spec's queue and priority class are checked against it.
    - ``runtime``: the ``ClusterTrainingRuntime`` a TrainJob references.
    - ``working_dir``: where the code lives in the image (none: the image's ``WORKDIR``).
    - ``claims``: PersistentVolumeClaims (datasets, `capstan.k8s.render_datasets`) mounted in every pod.
    - ``env_from_secrets``: Secrets whose keys every pod sees as environment variables (``envFrom``): the stores
      of rank 0's tracking run and of `capstan.checkpoint` (``CAPSTAN_DB_URL`` or ``CAPSTAN_URL`` and
      ``CAPSTAN_TOKEN``, ``CAPSTAN_ARTIFACTS``, object-store credentials), referenced by name, never inlined. Not
      for ``trainjob``, whose trainer has no ``envFrom`` (the runtime's pod template can carry it).
    """

    format: TrainingFormat = "native"
    namespace: str | None = None
    image: str | None = None
    master_port: int = 29500
    shm_bytes: int = 2 * 2**30
    flavors: Mapping[str, ResourceFlavor] = field(default_factory=dict)
    product_label: str = PRODUCT_LABEL
    gpu_products: Mapping[str, str] = field(default_factory=dict)
    kueue: KueueOptions = field(default_factory=KueueOptions)
    queue_config: QueueConfig | None = None
    runtime: str = "torch-distributed"
    working_dir: str | None = None
    claims: tuple[ClaimMount, ...] = ()
    env_from_secrets: tuple[str, ...] = ()


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def queue_labels(spec: TrainingJobSpec, config: QueueConfig | None) -> dict[str, str]:
    """Kueue's labels for the job's queue and priority class (none without a queue); checked against ``config``
    when there is one."""
    if spec.queue is None:
        return {}
    if config is not None:
        return workload_labels(config, spec.queue, spec.priority)
    labels = {QUEUE_NAME_LABEL: spec.queue}
    if spec.priority is not None:
        labels[PRIORITY_CLASS_LABEL] = spec.priority
    return labels


def resolve_flavor(spec: TrainingJobSpec, options: TrainingRenderOptions) -> ResourceFlavor | None:
    """The spec's GPU flavor: a known one by name, else one matching the GPU product label."""
    if spec.gpu_flavor is None:
        return None
    known = options.flavors.get(spec.gpu_flavor)
    if known is not None:
        return known
    product = options.gpu_products.get(spec.gpu_flavor, spec.gpu_flavor)
    taints = (Taint(GPU_TAINT, effect="NoSchedule"),) if spec.gpus else ()
    return ResourceFlavor(name=spec.gpu_flavor, node_labels={options.product_label: product}, taints=taints)


def _entry_argv(spec: TrainingJobSpec) -> list[str]:
    return (["-m", spec.entry] if spec.entry_kind == "module" else [spec.entry]) + list(spec.args)


def _torchrun_entry(spec: TrainingJobSpec) -> list[str]:
    return (["--module", spec.entry] if spec.entry_kind == "module" else [spec.entry]) + list(spec.args)


def launch_command(spec: TrainingJobSpec, *, torchrun_flags: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The pod's command: ``python ENTRY ARGS`` for one process per pod (the rank variables are the pod's),
    ``torchrun FLAGS ENTRY ARGS`` for several (torchrun's static rendezvous assigns each process's rank)."""
    if spec.nproc_per_worker == 1:
        return ("python", *_entry_argv(spec))
    return ("torchrun", *torchrun_flags, f"--nproc-per-node={spec.nproc_per_worker}", *_torchrun_entry(spec))


def _job_env(spec: TrainingJobSpec) -> dict[str, str]:
    env = dict(spec.env)
    env.update(capstan_env(spec, job_id=spec.name, run_id=None, attempt=1))
    env.pop("CAPSTAN_JOB_ATTEMPT")  # the cluster retries pods itself; no attempt number is known when rendering
    env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = "1"
    if spec.nproc_per_worker > 1:
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def rendezvous_host(spec: TrainingJobSpec) -> str:
    """Index 0's stable DNS name in the job's namespace: ``<job>-0.<service>``, the Service named like the job."""
    return f"{spec.name}-0.{spec.name}"


def _native_env(spec: TrainingJobSpec, options: TrainingRenderOptions) -> dict[str, str]:
    env = _job_env(spec)
    if spec.min_workers is not None:  # torchrun's elastic rendezvous sets the sizes and ranks
        env.update({"MASTER_ADDR": rendezvous_host(spec), "MASTER_PORT": str(options.master_port),
                    "TORCHELASTIC_RUN_ID": spec.name, "CAPSTAN_JOB_WORKERS_REQUESTED": str(spec.workers)})
        return env
    env.update({"MASTER_ADDR": rendezvous_host(spec), "MASTER_PORT": str(options.master_port),
                "WORLD_SIZE": str(spec.world_size), "LOCAL_WORLD_SIZE": str(spec.nproc_per_worker),
                "GROUP_WORLD_SIZE": str(spec.workers), "TORCHELASTIC_RUN_ID": spec.name})
    if spec.nproc_per_worker == 1:
        env.update({"LOCAL_RANK": "0", "ROLE_NAME": "default", "ROLE_WORLD_SIZE": str(spec.world_size)})
    return env


def _native_field_env(spec: TrainingJobSpec) -> dict[str, str]:
    if spec.min_workers is not None:
        return {}
    names = ("GROUP_RANK", "RANK", "ROLE_RANK") if spec.nproc_per_worker == 1 else ("GROUP_RANK",)
    return {name: COMPLETION_INDEX_FIELD for name in names}


def _resources(spec: TrainingJobSpec) -> Resources:
    return Resources(cpu=round(spec.cpu * MILLI), memory=spec.memory, gpu=round(spec.gpus * MILLI))


def _image(spec: TrainingJobSpec, options: TrainingRenderOptions) -> str:
    image = options.image or spec.image
    if not image:
        raise _fail("job.image", "a Kubernetes rendering needs a container image (the spec's image or --image)")
    return image


def _pod(spec: TrainingJobSpec, options: TrainingRenderOptions, container: Container, *,
         restart_policy: str = "Never", subdomain: str | None = None,
         labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    template = pod_template(container, PodOptions(
        flavor=resolve_flavor(spec, options), kueue=options.kueue, labels=dict(labels or {}),
        shm_bytes=options.shm_bytes, restart_policy=restart_policy, subdomain=subdomain, claims=options.claims))
    template["spec"]["terminationGracePeriodSeconds"] = math.ceil(spec.grace_s)
    return template


def _metadata(spec: TrainingJobSpec, options: TrainingRenderOptions, labels: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.name,
                            "labels": {"app.kubernetes.io/managed-by": "capstan", "capstan.dev/job": spec.name,
                                       **labels}}
    if options.namespace is not None:
        meta["namespace"] = namespace_for(options.namespace, "namespace")
    return meta


def elastic_command(spec: TrainingJobSpec) -> tuple[str, ...]:
    """The pod's command of a job with ``min_workers``: ``torchrun`` with ``--nnodes=MIN:MAX`` and a ``c10d``
    rendezvous hosted by index 0 (it resolves ``MASTER_ADDR`` to its own address), so the pods Kueue admitted
    agree on ``WORLD_SIZE`` and the ranks."""
    return ("torchrun", f"--nnodes={spec.min_workers}:{spec.workers}", f"--nproc-per-node={spec.nproc_per_worker}",
            "--rdzv-backend=c10d", "--rdzv-endpoint=$(MASTER_ADDR):$(MASTER_PORT)", "--rdzv-id=$(TORCHELASTIC_RUN_ID)",
            *_torchrun_entry(spec))


def _native(spec: TrainingJobSpec, options: TrainingRenderOptions, labels: Mapping[str, str]) -> list[dict[str, Any]]:
    flags = ("--nnodes=$(GROUP_WORLD_SIZE)", "--node-rank=$(GROUP_RANK)", "--master-addr=$(MASTER_ADDR)",
             "--master-port=$(MASTER_PORT)")
    command = elastic_command(spec) if spec.min_workers is not None else launch_command(spec, torchrun_flags=flags)
    container = Container(name="trainer", image=_image(spec, options),
                          command=command, env=_native_env(spec, options),
                          field_env=_native_field_env(spec), resources=_resources(spec),
                          ports={"rendezvous": options.master_port}, working_dir=options.working_dir,
                          env_from_secrets=options.env_from_secrets)
    template = _pod(spec, options, container, subdomain=spec.name, labels={"capstan.dev/job": spec.name})
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(spec, options, {}),
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                        "selector": {JOB_NAME_LABEL: spec.name},
                        "ports": [{"name": "rendezvous", "port": options.master_port,
                                   "targetPort": options.master_port, "protocol": "TCP"}]}}
    meta = _metadata(spec, options, labels)
    if spec.min_workers is not None:  # Kueue may admit fewer pods, and then lowers completions with parallelism
        meta["annotations"] = {MIN_PARALLELISM_ANNOTATION: str(spec.min_workers),
                               COMPLETIONS_EQUAL_PARALLELISM_ANNOTATION: "true"}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
           "spec": {"completionMode": "Indexed", "completions": spec.workers, "parallelism": spec.workers,
                    "backoffLimit": spec.max_restarts, "podReplacementPolicy": "Failed",
                    # Preemption and node drains do not use up restarts, as in Capstan's local runner.
                    "podFailurePolicy": {"rules": [{"action": "Ignore",
                                                    "onPodConditions": [{"type": "DisruptionTarget",
                                                                         "status": "True"}]}]},
                    "template": template}}
    return [service, job]


def _pytorchjob(spec: TrainingJobSpec, options: TrainingRenderOptions,
                labels: Mapping[str, str]) -> list[dict[str, Any]]:
    # The training operator sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE and RANK, plus PET_* for torchrun.
    container = Container(name=PYTORCH_CONTAINER, image=_image(spec, options), command=launch_command(spec),
                          env=_job_env(spec), resources=_resources(spec),
                          ports={"pytorchjob-port": options.master_port}, working_dir=options.working_dir,
                          env_from_secrets=options.env_from_secrets)
    policy = "OnFailure" if spec.max_restarts else "Never"
    template = _pod(spec, options, container, restart_policy=policy, labels={"capstan.dev/job": spec.name})
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": policy, "template": template}}
    if spec.workers > 1:
        replicas["Worker"] = {"replicas": spec.workers - 1, "restartPolicy": policy, "template": template}
    body: dict[str, Any] = {"pytorchReplicaSpecs": replicas,
                            "runPolicy": {"backoffLimit": spec.max_restarts, "cleanPodPolicy": "None"}}
    if spec.nproc_per_worker > 1:
        body["nprocPerNode"] = str(spec.nproc_per_worker)
    return [{"apiVersion": PYTORCHJOB_API, "kind": "PyTorchJob", "metadata": _metadata(spec, options, labels),
             "spec": body}]


def trainjob_pod(spec: TrainingJobSpec, options: TrainingRenderOptions) -> dict[str, Any]:
    """The pod template whose security, volumes and placement a TrainJob's runtime patch carries."""
    container = Container(name=TRAINER_NODE, image=_image(spec, options), env=_job_env(spec),
                          resources=_resources(spec))
    return _pod(spec, options, container)


def _trainjob(spec: TrainingJobSpec, options: TrainingRenderOptions,
              labels: Mapping[str, str]) -> list[dict[str, Any]]:
    if options.env_from_secrets:
        raise _fail("env_from_secrets", "a TrainJob's trainer has no envFrom; give the ClusterTrainingRuntime's "
                                        "pod template the Secrets, or render --format native or pytorchjob")
    pod = trainjob_pod(spec, options)["spec"]
    node = pod["containers"][0]
    pod_patch = {k: v for k, v in pod.items()
                 if k in ("securityContext", "volumes", "affinity", "tolerations", "terminationGracePeriodSeconds")}
    pod_patch["containers"] = [{k: v for k, v in node.items() if k in ("name", "securityContext", "volumeMounts")}]
    trainer: dict[str, Any] = {"image": node["image"], "command": ["torchrun", *_torchrun_entry(spec)],
                               "numNodes": spec.workers, "numProcPerNode": spec.nproc_per_worker}
    if node.get("env"):
        trainer["env"] = node["env"]
    if node.get("resources"):
        trainer["resourcesPerNode"] = node["resources"]
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": TRAINER_NODE, "template": {"spec": {"template": {"spec": pod_patch}}}}]}}}}
    body = {"runtimeRef": {"name": options.runtime, "apiGroup": "trainer.kubeflow.org",
                           "kind": "ClusterTrainingRuntime"},
            "trainer": trainer, "runtimePatches": [patch]}
    return [{"apiVersion": TRAINJOB_API, "kind": "TrainJob", "metadata": _metadata(spec, options, labels),
             "spec": body}]


def check_secret_names(names: tuple[str, ...], path: str = "env_from_secrets") -> tuple[str, ...]:
    """``names`` once each is a valid Secret name (a DNS-1123 subdomain); `InvalidParameterValue` at ``path``."""
    for name in names:
        if len(name) > 253 or not _SECRET_NAME.match(name):
            raise _fail(path, f"{name!r} is not a valid Secret name (lowercase letters, digits, '-' and '.')")
    if len(set(names)) != len(names):
        raise _fail(path, "a Secret is named twice")
    return names


def render_training(spec: TrainingJobSpec, options: TrainingRenderOptions | None = None) -> list[dict[str, Any]]:
    """The manifests of ``spec`` in ``options.format``, in the order they can be applied.

    Raises `InvalidParameterValue` naming the field: no image, an unknown format, a bad namespace or Secret name,
    ``env_from_secrets`` on a TrainJob, ``min_workers`` in a format other than ``native``, a GPU fraction with no
    shareable flavor, or a queue or priority class the queue configuration lacks.
    """
    opts = options if options is not None else TrainingRenderOptions()
    if not 1 <= opts.master_port <= 65535:
        raise _fail("master_port", f"must be between 1 and 65535, got {opts.master_port}")
    check_secret_names(opts.env_from_secrets)
    labels = queue_labels(spec, opts.queue_config)
    if spec.min_workers is not None and opts.format != "native":
        raise _fail("job.min_workers", f"partial admission is rendered for the native format only (Kueue admits "
                                       f"a batch/v1 Job with fewer pods); {opts.format} takes every worker or none")
    if opts.format == "native":
        return _native(spec, opts, labels)
    if opts.format == "pytorchjob":
        return _pytorchjob(spec, opts, labels)
    if opts.format == "trainjob":
        return _trainjob(spec, opts, labels)
    raise _fail("format", f"{opts.format!r} is not one of {', '.join(FORMATS)}")
