"""`BackendModelSource`: the serving loader's `ModelSource` port over a `TrackingBackend` (local stores or a server).

It resolves a model URI as the SDK does (`capstan.sdk.fluent_models.resolve_model_uri`), lists the model's files
with the sha256 the artifact store recorded for each, and downloads them; `capstan.serving.loading` verifies the
download against those digests before loading anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from capstan.errors import InvalidParameterValue
from capstan.serving.loading import FetchedModel

if TYPE_CHECKING:
    from capstan.sdk.backends import TrackingBackend


class BackendModelSource:
    """Fetches registry and run models through ``backend`` (which checks the caller's right to read them)."""

    def __init__(self, backend: TrackingBackend) -> None:
        self.backend = backend

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        """Download the model folder at ``uri`` below ``dest``, with the recorded digest of each file."""
        from capstan.sdk import fluent_models as sdk_models

        owner, path = sdk_models.resolve_model_uri(self.backend, uri)
        if owner.kind == "model_version":
            name, number = owner.split_version()
            version = str(number)
        elif owner.kind == "logged_model":
            name, version = self.backend.get_logged_model(owner.id).name, "1"
        else:
            name, version = path.rstrip("/").rpartition("/")[2] or owner.id, "1"
        rel = path.strip("/")
        start = len(rel) + 1 if rel else 0
        digests = {item.path[start:]: item.digest
                   for item in self.backend.list_artifacts(owner, rel, recursive=True) if not item.is_dir}
        folder = self.backend.download_artifacts(owner, rel, dest)
        if not (folder / "MLmodel").is_file():
            raise InvalidParameterValue(f"model uri: {uri!r} does not point at a model folder (no MLmodel file)")
        return FetchedModel(folder, name, version, digests)
