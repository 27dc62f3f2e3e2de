"""``capstan k8s render study STUDY.yaml -o DIR``: a hyperparameter study (the file ``capstan tune -f`` reads) as
a controller Job that runs ``capstan tune`` on the cluster, with its study file and state claim
(`capstan.k8s.render_studies`, docs/kubernetes-training.md)."""

from __future__ import annotations

from pathlib import Path

import click

from capstan.errors import InvalidParameterValue


def register(group: click.Group) -> None:
    """Add ``study`` to the ``capstan k8s render`` group (which `capstan.cli.k8s_render` creates)."""
    render = group.commands["render"]
    if not isinstance(render, click.Group):
        raise TypeError("capstan k8s render must be a group")  # a wiring mistake, not user input

    @render.command("study")
    @click.argument("study_file", metavar="STUDY.yaml", type=click.Path(dir_okay=False, path_type=Path))
    @click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path), metavar="DIR",
                  help="Folder to write the manifests to (created when missing).")
    @click.option("--image", default=None,
                  help="Image with Capstan and the trials' code (default: a training-job trial's image).")
    @click.option("--workdir", default="/app", show_default=True,
                  help="Where the study's scripts and modules are in the image.")
    @click.option("--project", default="default", show_default=True, help="Project, i.e. the namespace.")
    @click.option("--queue-config", type=click.Path(path_type=Path), metavar="FILE",
                  help="Queue configuration: the study's queue and priority are checked; its flavors place the pod.")
    @click.option("--state-claim", default=None, metavar="CLAIM",
                  help="Existing PersistentVolumeClaim for the controller's CAPSTAN_HOME (default: render "
                       "<study>-state).")
    @click.option("--state-size", default="1Gi", show_default=True, help="Size of the rendered state claim.")
    @click.option("--storage-class", default=None, help="StorageClass of the state claim (default: the cluster's).")
    @click.option("--env-from-secret", "env_from", multiple=True, metavar="SECRET",
                  help="Secret whose keys the controller sees (e.g. CAPSTAN_DB_URL); repeatable.")
    @click.option("--dataset", "datasets", multiple=True, metavar="NAME:/PATH[:ro|rw]",
                  help="Mount dataset NAME at PATH for the trials, read-only unless :rw; repeatable.")
    @click.option("--restarts", default=3, show_default=True, type=click.IntRange(min=0),
                  help="Times a failed controller pod is replaced (each replacement resumes the study).")
    @click.option("--ttl", default=86400, show_default=True, type=click.IntRange(min=0),
                  help="Seconds the finished Job is kept (ttlSecondsAfterFinished).")
    @click.option("--trials-in-pod", is_flag=True,
                  help="Run training-job trials inside the controller pod (sized for them) instead of as Jobs.")
    @click.option("--trial-key-secret", default=None, metavar="SECRET",
                  help="Secret whose CAPSTAN_TRIAL_KEY trials and controller share (default: <study>-trial-key).")
    @click.option("--trial-port", default=7077, show_default=True, type=click.IntRange(1, 65535),
                  help="Port the controller takes its trials' reports on.")
    def study(study_file: Path, out: Path, image: str | None, workdir: str, project: str, queue_config: Path | None,
              state_claim: str | None, state_size: str, storage_class: str | None, env_from: tuple[str, ...],
              datasets: tuple[str, ...], restarts: int, ttl: int, trials_in_pod: bool, trial_key_secret: str | None,
              trial_port: int) -> None:
        """Render STUDY.yaml as a Job whose one pod runs ``capstan tune -f`` with the study; a replaced pod
        resumes the study. Function and script trials run inside that pod, ``parallel_trials`` at a time; each
        training-job trial becomes a Job of its own, created by the controller (unless --trials-in-pod)."""
        from capstan.cli.k8s_render import write_manifests
        from capstan.k8s.render_datasets import parse_mount
        from capstan.k8s.render_queues import namespace_for
        from capstan.k8s.render_studies import StudyRenderOptions, render_study
        from capstan.queue.config import load_config
        from capstan.resources.quantity import MILLI, parse_quantity
        from capstan.tuning.sdk import load_study_file
        from capstan.tuning.spec import JobTrial

        if not study_file.is_file():
            raise InvalidParameterValue(f"STUDY.yaml: {study_file} does not exist")
        mounts = tuple(parse_mount(text) for text in datasets)
        state_bytes = parse_quantity(state_size, path="--state-size") // MILLI
        spec = load_study_file(study_file)
        config = load_config(queue_config) if queue_config is not None else None
        options = StudyRenderOptions(image=image, working_dir=workdir, project=project, queue_config=config,
                                     state_claim=state_claim, state_bytes=state_bytes, storage_class=storage_class,
                                     env_from_secrets=env_from, datasets=mounts, restarts=restarts, ttl_seconds=ttl,
                                     trials_in_pod=trials_in_pod, trial_key_secret=trial_key_secret,
                                     trial_port=trial_port)
        objects = render_study(spec, options)
        written = write_manifests(objects, out)
        click.echo(f"wrote {len(written)} object(s) to {out}: Job {spec.name} runs `capstan tune` on the study")
        if isinstance(spec.trial, JobTrial) and not trials_in_pod:
            secret = trial_key_secret or f"{spec.name}-trial-key"
            click.echo(f"each trial runs as a Job of its own; before applying, create the trials' key: kubectl -n "
                       f"{namespace_for(project)} create secret generic {secret} "
                       "--from-literal=CAPSTAN_TRIAL_KEY=$(openssl rand -hex 32)")
