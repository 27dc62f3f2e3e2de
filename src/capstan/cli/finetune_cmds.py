"""``capstan finetune BASE_MODEL_URI --data FILE.jsonl``: fine-tune a language model as a training job.

Everything is checked before anything starts (one ``error: ...`` line, exit 1): the options
(`capstan.llm.finetune.FinetuneOptions.check`), every row of the data file (the first bad one named by its line
number), and the base model (a transformers language model: its MLmodel's ``transformers`` flavor, or a
``save_pretrained`` folder). The job is then built as ``capstan train`` builds one (its entry point is the module
`capstan.cli.finetune_job`) and runs through the queue the same way: in the foreground here, or on the server named
by ``CAPSTAN_URL``, with rank 0's output streamed and Ctrl-C cancelling it. At the end the new version's URI is
printed on stdout.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import click

from capstan.cli.training_cmds import gang_options
from capstan.errors import InvalidParameterValue

JOB_ENTRY = "capstan.cli.finetune_job"


def check_base_model(uri: str) -> None:
    """Refuse (`InvalidParameterValue` naming ``BASE_MODEL_URI``) a base that is not a transformers language model:
    only its MLmodel is read (downloaded for a registry or run model), not its weights."""
    from capstan.llm.adapters import adapter_config
    from capstan.models.format import read_mlmodel

    if uri.startswith(("models:/", "runs:/")):
        from capstan.cli.context import cli_settings
        from capstan.sdk.backends import open_backend
        from capstan.sdk.fluent_models import resolve_model_uri

        backend = open_backend(cli_settings())
        try:
            owner, path = resolve_model_uri(backend, uri)
            with tempfile.TemporaryDirectory(prefix="capstan-finetune-") as tmp:
                file = backend.download_artifacts(owner, f"{path.strip('/')}/MLmodel".lstrip("/"), tmp)
                mlmodel = read_mlmodel(file if file.is_dir() else file.parent)
        finally:
            backend.close()
    else:
        folder = Path(uri.removeprefix("file://"))
        if not folder.is_dir():
            raise InvalidParameterValue(f"BASE_MODEL_URI: {uri!r} is not models:/NAME/VERSION, runs:/RUN/PATH or a "
                                        "folder")
        if (folder / "config.json").is_file() and not (folder / "MLmodel").is_file():
            return  # a save_pretrained folder
        if not (folder / "MLmodel").is_file():
            raise InvalidParameterValue(f"BASE_MODEL_URI: {uri!r} holds neither an MLmodel file nor a config.json")
        mlmodel = read_mlmodel(folder)
    flavor = mlmodel["flavors"].get("transformers")
    if not isinstance(flavor, dict) or flavor.get("task") not in (None, "text-generation"):
        kinds = ", ".join(sorted(mlmodel["flavors"])) or "none"
        raise InvalidParameterValue(f"BASE_MODEL_URI: {uri!r} is not a language model (flavors: {kinds}; "
                                    "task: " + str((flavor or {}).get("task", "-")) + ")")
    adapter = adapter_config(mlmodel)
    if adapter is not None:
        raise InvalidParameterValue(f"BASE_MODEL_URI: {uri!r} is a LoRA adapter; fine-tune its base model "
                                    f"({adapter.get('base_model')}) instead")


def _job_name(registered: str) -> str:
    stem = re.sub(r"[^a-z0-9]+", "-", registered.lower()).strip("-")[:48].strip("-")
    return f"finetune-{stem}" if stem else "finetune"


def _require_libraries(method: str) -> None:
    from capstan.models.transformers_flavor import require_llm_extra

    require_llm_extra("torch", "transformers", *(("peft",) if method == "lora" else ()))


@click.command("finetune")
@click.argument("base_model", metavar="BASE_MODEL_URI")
@click.option("--data", required=True, help="Training rows, JSON lines: {prompt, completion}, {messages} or {text}.")
@click.option("--method", default="lora", show_default=True, help="lora (an adapter) or full (every weight).")
@click.option("--epochs", default=1, show_default=True, type=int, help="Passes over the data.")
@click.option("--lr", type=float, help="Learning rate (default: 2e-4 for lora, 5e-5 for full).")
@click.option("--batch-size", default=8, show_default=True, type=int, help="Rows per step (per process).")
@click.option("--lora-rank", default=8, show_default=True, type=int, help="Rank of the LoRA matrices.")
@click.option("--lora-alpha", default=16, show_default=True, type=int, help="LoRA scaling numerator.")
@click.option("--lora-dropout", default=0.0, show_default=True, type=float, help="Dropout on the LoRA input.")
@click.option("--max-length", default=0, show_default=True, type=int,
              help="Tokens per row, longer rows cut (0: the model's context window).")
@click.option("--register-as", help="Registered model of the result (default: BASE-lora or BASE-ft).")
@click.option("--checkpoint-every", default=50, show_default=True, type=int, help="Steps between checkpoints.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the weights' init and row order.")
@gang_options(name_help="Job name (default: finetune-REGISTERED-NAME).", memory_example="16Gi",
              gpus_help="GPUs per worker.",
              restarts_help="Restarts of the gang after a failure; each resumes from the latest checkpoint.")
def finetune_cmd(base_model: str, data: str, method: str, epochs: int, lr: float | None, batch_size: int,
                 lora_rank: int, lora_alpha: int, lora_dropout: float, max_length: int, register_as: str | None,
                 checkpoint_every: int, seed: int, name: str | None, workers: int, nproc_per_worker: int,
                 cpu: float, memory: str | None, gpus: float, gpu_flavor: str | None, max_restarts: int,
                 experiment: str | None, queue: str | None, priority: str | None, env: tuple[str, ...]) -> None:
    """Fine-tune the language model BASE_MODEL_URI (models:/NAME/VERSION, runs:/RUN/PATH or a folder) on --data
    as a training job, and register the result (a LoRA adapter of the base, or a full model) as a new version.

    The loss is tracked on the job's run each step; checkpoints let a restarted or preempted job resume.
    """
    from capstan.cli import training_cmds
    from capstan.llm.finetune import FinetuneOptions, read_examples

    options = FinetuneOptions(base_model=base_model, data=os.path.abspath(data), method=method, epochs=epochs,
                              lr=lr, batch_size=batch_size, lora_rank=lora_rank, lora_alpha=lora_alpha,
                              lora_dropout=lora_dropout, max_length=max_length, register_as=register_as,
                              checkpoint_every=checkpoint_every, seed=seed).check()
    read_examples(options.data)
    _require_libraries(options.method)
    if not base_model.startswith(("models:/", "runs:/")):
        options = _with_local_base(options)
    check_base_model(options.base_model)
    spec = training_cmds.build_spec(
        JOB_ENTRY, options.argv(), name=name or _job_name(options.registered_name), workers=workers,
        nproc_per_worker=nproc_per_worker, cpu=cpu, memory=memory, gpus=gpus, gpu_flavor=gpu_flavor,
        max_restarts=max_restarts, experiment=experiment, queue=queue, priority=priority, env=env)
    job = training_cmds._run_remote(spec) if training_cmds._remote() else training_cmds._run_local(spec)
    training_cmds._outcome(job)
    _print_version(job)


def _with_local_base(options: Any) -> Any:
    """A local base folder made absolute (the workers start in the job's working directory)."""
    import dataclasses

    return dataclasses.replace(options, base_model=os.path.abspath(options.base_model.removeprefix("file://")))


def _print_version(job: dict[str, Any]) -> None:
    """``models:/NAME/VERSION`` of what the job registered (a version created from its run)."""
    from capstan.cli.context import cli_settings
    from capstan.sdk.backends import open_backend

    if not job.get("run_id"):
        return
    backend = open_backend(cli_settings())
    try:
        versions = backend.search_model_versions(filter_string=f"run_id = '{job['run_id']}'").items
    finally:
        backend.close()
    for version in versions:
        click.echo(f"models:/{version.name}/{version.version}")


def register(cli: click.Group) -> None:
    """Add ``finetune`` to the ``capstan`` command group."""
    cli.add_command(finetune_cmd)
