"""Whether a registry or run model is a language model, decided from its file listing and MLmodel file alone.

A language model written by ``capstan.log_model`` holds a ``save_pretrained`` (or sentence-transformers) subfolder
next to an MLmodel file whose flavors include ``transformers``. ``capstan serve`` decides with this which app to
run, and the deployment manager which options a deployment's replicas take (`capstan.serving.manage`).
"""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from capstan.sdk.backends import TrackingBackend
    from capstan.settings import Settings

MARKERS = ("config.json", "modules.json", "adapter_config.json")
"""Files one of which a language model's weights folder holds (transformers, sentence-transformers, peft)."""


def registered_language_model(model_uri: str, settings: Settings) -> bool:
    """Whether the model at ``model_uri`` (``models:/...`` or ``runs:/...``, against the stores or the server of
    ``settings``) is a language model: only its MLmodel file is downloaded."""
    from capstan.sdk.backends import open_backend

    backend = open_backend(settings)
    try:
        return language_model_in(backend, model_uri)
    finally:
        backend.close()


def language_model_in(backend: TrackingBackend, model_uri: str) -> bool:
    """`registered_language_model` through an open ``backend`` (left open)."""
    from capstan.sdk.model_source import BackendModelSource

    listing = BackendModelSource(backend).list_model(model_uri)
    paths = listing.digests
    if "MLmodel" not in paths or not any(
            path.count("/") == 1 and path.rpartition("/")[2] in MARKERS for path in paths):
        return False
    with tempfile.TemporaryDirectory(prefix="capstan-mlmodel-") as tmp:
        mlmodel = backend.download_artifacts(listing.owner, f"{listing.path}/MLmodel".lstrip("/"), tmp)
        data = yaml.safe_load(mlmodel.read_text())
    flavors = data.get("flavors") if isinstance(data, dict) else None
    return isinstance(flavors, dict) and "transformers" in flavors
