"""`BackendModelSource`: the serving loader's `ModelSource` port over a `TrackingBackend` (local stores or a server).

It resolves a model URI as the SDK does (`capstan.sdk.fluent_models.resolve_model_uri`), lists the model's files
with the sha256 the artifact store recorded for each, and downloads them; `capstan.serving.loading` verifies the
download against those digests before loading anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from capstan.errors import InvalidParameterValue
from capstan.serving.loading import FetchedModel

if TYPE_CHECKING:
    from capstan.sdk.backends import ArtifactOwner, TrackingBackend


@dataclass(frozen=True, slots=True)
class ModelListing:
    """A model's files before they are downloaded: where they are, the name and version to serve them as, and the
    sha256 the artifact store recorded for each (path relative to the model folder -> digest)."""

    owner: ArtifactOwner
    path: str
    name: str
    version: str
    digests: Mapping[str, str | None]


class BackendModelSource:
    """Fetches registry and run models through ``backend`` (which checks the caller's right to read them)."""

    def __init__(self, backend: TrackingBackend) -> None:
        self.backend = backend

    def list_model(self, uri: str) -> ModelListing:
        """The model at ``uri``: its name, version and the recorded digest of each file (nothing downloaded)."""
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
        return ModelListing(owner, rel, name, version, digests)

    def download(self, listing: ModelListing, dest: Path) -> FetchedModel:
        """Download the listed model folder below ``dest``."""
        folder = self.backend.download_artifacts(listing.owner, listing.path, dest)
        if not (folder / "MLmodel").is_file():
            raise InvalidParameterValue(f"{listing.name!r} version {listing.version} is not a model folder "
                                        "(no MLmodel file)")
        return FetchedModel(folder, listing.name, listing.version, listing.digests)

    def fetch(self, uri: str, dest: Path) -> FetchedModel:
        """Download the model folder at ``uri`` below ``dest``, with the recorded digest of each file."""
        listing = self.list_model(uri)
        try:
            return self.download(listing, dest)
        except InvalidParameterValue:
            raise InvalidParameterValue(
                f"model uri: {uri!r} does not point at a model folder (no MLmodel file)") from None
