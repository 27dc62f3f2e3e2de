"""Artifact path normalisation (pure)."""

from __future__ import annotations

from capstan.errors import InvalidParameterValue


def normalize_path(path: str, *, field_name: str = "path", allow_empty: bool = False) -> str:
    """Return ``path`` as clean relative POSIX segments; reject absolute paths, ``..`` and control characters."""
    if "\x00" in path or any(ord(ch) < 32 for ch in path):
        raise InvalidParameterValue(f"{field_name}: control characters are not allowed in {path!r}")
    if path.startswith("/") or path.startswith("\\") or (len(path) > 1 and path[1] == ":"):
        raise InvalidParameterValue(f"{field_name}: absolute paths are not allowed: {path!r}")
    parts = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidParameterValue(f"{field_name}: '..' is not allowed in {path!r}")
        parts.append(part)
    clean = "/".join(parts)
    if not clean and not allow_empty:
        raise InvalidParameterValue(f"{field_name}: must not be empty")
    return clean


def join(prefix: str, path: str) -> str:
    """Join a normalised prefix and a relative path."""
    rel = normalize_path(path, allow_empty=True)
    if not prefix:
        return rel
    return f"{prefix}/{rel}" if rel else prefix


ARTIFACTS_SCHEME = "mlflow-artifacts:"


def path_from_uri(uri: str, *, field_name: str = "artifact_uri") -> str:
    """The ArtifactStore path behind an ``mlflow-artifacts:`` URI.

    ``mlflow-artifacts:/3/<run>/artifacts`` and ``mlflow-artifacts://host:port/3/<run>/artifacts`` both give
    ``3/<run>/artifacts``. Any other scheme (``s3://``, ``file:``, a local path) is not stored by the
    ArtifactStore and is rejected with `InvalidParameterValue`.
    """
    if not uri.startswith(ARTIFACTS_SCHEME):
        raise InvalidParameterValue(f"{field_name}: {uri!r} is not an {ARTIFACTS_SCHEME} URI")
    rest = uri[len(ARTIFACTS_SCHEME):]
    if rest.startswith("//"):
        # mlflow-artifacts://host:port/path: the authority names the server, not part of the path.
        _authority, _, rest = rest[2:].partition("/")
    return normalize_path(rest.lstrip("/"), field_name=field_name, allow_empty=True)
