"""``capstan k8s render job SCRIPT -o DIR``: a training job, with the options of ``capstan train``, as Kubernetes
manifests (`capstan.k8s.render_training`, docs/kubernetes-training.md): an indexed Job and a headless Service,
a Kubeflow PyTorchJob (``--format pytorchjob``) or a Kubeflow Trainer TrainJob (``--format trainjob``)."""

from __future__ import annotations

from pathlib import Path

import click

from capstan.cli.training_cmds import gang_options
from capstan.errors import InvalidParameterValue


def _products(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for value in values:
        flavor, sep, product = value.partition("=")
        if not sep or not flavor or not product:
            raise InvalidParameterValue(f"--gpu-product: {value!r} is not FLAVOR=PRODUCT "
                                        "(e.g. a100=NVIDIA-A100-SXM4-80GB)")
        out[flavor] = product
    return out


def register(group: click.Group) -> None:
    """Add ``job`` to the ``capstan k8s render`` group (which `capstan.cli.k8s_render` creates)."""
    render = group.commands["render"]
    if not isinstance(render, click.Group):
        raise TypeError("capstan k8s render must be a group")  # a wiring mistake, not user input

    @render.command("job")
    @click.argument("entry", metavar="SCRIPT_OR_MODULE")
    @click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="[-- ARGS...]")
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--format", "fmt", type=click.Choice(["native", "pytorchjob", "trainjob"]), default="native",
                  show_default=True, help="Indexed Job + headless Service, Kubeflow PyTorchJob or Trainer TrainJob.")
    @click.option("--image", required=True, help="Container image holding the training code.")
    @click.option("--namespace", help="Namespace of the objects (default: the one they are applied to).")
    @click.option("--master-port", default=29500, show_default=True, type=click.IntRange(1, 65535),
                  help="Rank 0's rendezvous port.")
    @click.option("--shm-size", default="2Gi", show_default=True, help="Size of the memory-backed /dev/shm.")
    @click.option("--runtime", default="torch-distributed", show_default=True,
                  help="ClusterTrainingRuntime a TrainJob references.")
    @click.option("--gpu-product", "gpu_products", multiple=True, metavar="FLAVOR=PRODUCT",
                  help="nvidia.com/gpu.product value of a GPU flavor, e.g. a100=NVIDIA-A100-SXM4-80GB; repeatable.")
    @click.option("--queue-config", type=click.Path(path_type=Path), metavar="FILE",
                  help="Queue configuration: its flavors place the pods; --queue and --priority are checked.")
    @click.option("--dataset", "datasets", multiple=True, metavar="NAME:/PATH[:ro|rw]",
                  help="Mount dataset NAME (its PersistentVolumeClaim) in every worker at PATH, read-only unless "
                       ":rw; repeatable.")
    @click.option("--env-from-secret", "env_from", multiple=True, metavar="SECRET",
                  help="Secret whose keys every worker sees as environment variables (envFrom: the stores' URLs "
                       "and credentials); repeatable. Not for --format trainjob.")
    @gang_options(restarts_help="Restarts after a failure (the Job's backoffLimit; disruptions do not count).",
                  queue_help="LocalQueue (Kueue's queue-name label).")
    @click.option("--min-workers", type=int, default=None,
                  help="Partial admission (--format native): Kueue may start as few as this many workers when all "
                       "--workers do not fit; torchrun's elastic rendezvous sets WORLD_SIZE.")
    @click.option("--log-all-ranks", is_flag=True, help="Keep every rank's capstan.log_metric calls (default: rank 0).")
    def job(entry: str, args: tuple[str, ...], out: Path, fmt: str, image: str, namespace: str | None,
            master_port: int, shm_size: str, runtime: str, gpu_products: tuple[str, ...], queue_config: Path | None,
            datasets: tuple[str, ...], env_from: tuple[str, ...],
            name: str | None, workers: int, nproc_per_worker: int, cpu: float, memory: str | None, gpus: float,
            gpu_flavor: str | None, max_restarts: int, experiment: str | None, queue: str | None,
            priority: str | None, env: tuple[str, ...], min_workers: int | None, log_all_ranks: bool) -> None:
        """Render SCRIPT_OR_MODULE as a distributed training job, one YAML file per object. Arguments after `--`
        go to the script."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.cli.training_cmds import build_spec
        from capstan.k8s.render_datasets import check_mounts, parse_mount
        from capstan.k8s.render_training import TrainingRenderOptions, render_training
        from capstan.queue.config import load_config
        from capstan.resources.quantity import MILLI, parse_quantity

        claims = check_mounts([parse_mount(text) for text in datasets])
        spec = build_spec(entry, args, name=name, workers=workers, nproc_per_worker=nproc_per_worker, cpu=cpu,
                          memory=memory, gpus=gpus, gpu_flavor=gpu_flavor, max_restarts=max_restarts,
                          experiment=experiment, queue=queue, priority=priority, env=env,
                          log_all_ranks=log_all_ranks, min_workers=min_workers)
        config = load_config(queue_config) if queue_config is not None else None
        options = TrainingRenderOptions(
            format="pytorchjob" if fmt == "pytorchjob" else "trainjob" if fmt == "trainjob" else "native",
            namespace=namespace, image=image, master_port=master_port,
            shm_bytes=parse_quantity(shm_size, path="--shm-size") // MILLI,
            flavors={f.name: f for f in config.flavors} if config is not None else {},
            gpu_products=_products(gpu_products), queue_config=config, runtime=runtime, claims=claims,
            env_from_secrets=env_from)
        try:
            docs = render_training(spec, options)
        except InvalidParameterValue as exc:
            field, sep, rest = exc.message.partition(": ")
            if sep and field == "env_from_secrets":
                raise InvalidParameterValue(f"--env-from-secret: {rest}") from None
            if sep and field == "job.min_workers":
                raise InvalidParameterValue(f"--min-workers: {rest}") from None
            raise
        written = write_manifests(docs, out)
        click.echo(f"wrote {len(written)} object(s) to {out}")
