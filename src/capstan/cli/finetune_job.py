"""The entry point of a ``capstan finetune`` training job: ``python -m capstan.cli.finetune_job BASE --data ...``.

Every process of the gang runs it. It fetches the base model (a registry or run model is downloaded and verified
against the artifact store's sha256; a local folder is read in place), trains with `capstan.llm.finetune_worker`
(loss on the job's run each step, checkpoints with `capstan.checkpoint`, resuming from the latest one), and on rank
0 logs the result to the job's run and registers it: a LoRA adapter (MLmodel naming its base, version tagged
``capstan.adapter.base``) or a full transformers model, so ``capstan serve`` can serve it at once.

It is an entry point (like ``capstan train``'s script): it sits above the SDK it reports through.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capstan.errors import CapstanError, InvalidParameterValue
from capstan.llm.adapters import ADAPTER_BASE_TAG, base_key
from capstan.llm.finetune import FinetuneOptions, read_examples


def fetch_base(uri: str, dest: Path) -> tuple[Path, str]:
    """The base model's local folder and its key (`capstan.llm.adapters.base_key`): a ``models:/`` or ``runs:/``
    URI is downloaded below ``dest`` and verified; a local folder is used in place."""
    if not uri.startswith(("models:/", "runs:/")):
        folder = Path(uri.removeprefix("file://"))
        if not folder.is_dir():
            raise InvalidParameterValue(f"BASE_MODEL_URI: {uri!r} is not a model URI or a folder")
        return folder.resolve(), base_key(uri)
    from capstan.sdk.fluent import process_backend
    from capstan.sdk.model_source import BackendModelSource
    from capstan.serving.loading import verify_folder

    fetched = BackendModelSource(process_backend()).fetch(uri, dest)
    verify_folder(fetched.folder, fetched.digests)
    rest = uri.removeprefix("models:/")
    registered = uri.startswith("models:/") and ("/" in rest.strip("/") or "@" in rest)
    return fetched.folder, base_key(uri, registered=(fetched.name, int(fetched.version)) if registered else None)


def _say(line: str) -> None:
    print(line, flush=True)


def _load_latest() -> tuple[Any, int] | None:
    import capstan.checkpoint

    return capstan.checkpoint.load_latest(map_location="cpu")


def _save(state: Any, step: int) -> None:
    import capstan.checkpoint

    capstan.checkpoint.save(state, step)


def _log_metrics(metrics: Mapping[str, float], step: int) -> None:
    from capstan.sdk import fluent

    fluent.log_metrics(metrics, step=step)


def publish(trained: Any, options: FinetuneOptions, key: str) -> tuple[str, int]:
    """Log the trained model to the job's run and register it as a new version of ``options.registered_name``;
    returns ``(name, version)``. An adapter's version is tagged with its base (``capstan.adapter.base``)."""
    from capstan.sdk import fluent
    from capstan.sdk import fluent_models as sdk_models

    run = fluent.active_run() or fluent.start_run()  # in a job: the job's own run
    backend = fluent.process_backend()
    lora = options.method == "lora"
    info = sdk_models.log_model(backend, trained.model, "adapter" if lora else "model",
                                experiment_id=run.experiment_id, run_id=run.run_id,
                                registered_model_name=options.registered_name,
                                tokenizer=None if lora else trained.tokenizer, base_model_uri=key if lora else None,
                                step=trained.steps)
    version = int(info.registered_model_version or 0)
    if lora:
        backend.set_model_version_tag(options.registered_name, version, ADAPTER_BASE_TAG, key)
    fluent.flush()
    return options.registered_name, version


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job's process (see the module docstring); 0 when it trained (and, on rank 0, registered)."""
    from capstan.llm.finetune_worker import TrainingHooks, train
    from capstan.sdk import fluent

    try:
        options = FinetuneOptions.from_argv(list(sys.argv[1:] if argv is None else argv))
        examples = read_examples(options.data)
    except CapstanError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from the base model's folder, never a hub
    rank = int(os.environ.get("RANK", "0"))
    tmp = Path(tempfile.mkdtemp(prefix="capstan-finetune-"))
    try:
        folder, key = fetch_base(options.base_model, tmp)
        fluent.log_params({"base_model": key, "method": options.method, "epochs": options.epochs,
                           "lr": options.learning_rate, "batch_size": options.batch_size,
                           "lora_rank": options.lora_rank, "lora_alpha": options.lora_alpha,
                           "max_length": options.max_length, "rows": len(examples)})
        trained = train(options, examples, folder, TrainingHooks(_log_metrics, _load_latest, _save, _say))
        if rank == 0:
            name, version = publish(trained, options, key)
            what = f"LoRA adapter of {key}" if options.method == "lora" else "model"
            _say(f"registered models:/{name}/{version} ({what})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _close_distributed()
    return 0


def _close_distributed() -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
