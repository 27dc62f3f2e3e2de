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


def experiment_segment(path: str, *, field_name: str = "path") -> str:
    """The experiment id a store path starts with, in its canonical spelling.

    Every stored file lives below ``<experiment id>/``, and the id is authorised as a number, so a segment that
    parses to the same number but is spelt differently (``010``, ``+10``) would be checked against one experiment
    and stored in another folder. Such paths are rejected with `InvalidParameterValue`.
    """
    first = path.split("/", 1)[0]
    if not first:
        raise InvalidParameterValue(
            f"Invalid value for parameter '{field_name}': artifact paths start with an experiment id "
            "(<experiment_id>/<run_id>/artifacts/...)")
    if not (first.isascii() and first.isdigit()) or (len(first) > 1 and first[0] == "0"):
        raise InvalidParameterValue(
            f"Invalid value for parameter '{field_name}': {first!r} is not an experiment id; artifact paths "
            "start with the experiment id written without leading zeros (<experiment_id>/<run_id>/artifacts/...)")
    return first


def uri_scheme(uri: str) -> str:
    """The lower-case scheme of ``uri`` (``""`` for a plain path; a Windows drive letter counts as a path)."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme.lower()
    return "" if len(scheme) == 1 else scheme


def is_local_uri(uri: str) -> bool:
    """True for a path on some machine's file system: a plain path, ``file:`` URI or Windows drive path."""
    return uri_scheme(uri) in ("", "file") or uri.startswith("\\")


def has_relative_references(uri: str) -> bool:
    """True when ``uri`` (decoded repeatedly, as a server or storage client would) holds ``..``/``.`` path
    segments, a NUL character, or a path that normalises to a different one.

    ``mlflow-artifacts://host/models/../../x``, ``s3://b/a/..%2f..%2fx`` and ``dbfs:/a%3f/../..`` all count.
    Repeated and trailing slashes do not (``s3://b/models///`` is fine).
    """
    import posixpath
    import re
    from urllib.parse import unquote_plus, urlparse

    decoded = uri
    while (step := unquote_plus(decoded)) != decoded:
        decoded = step
    if "\x00" in decoded or any(part == ".." for part in decoded.split("/")):
        return True
    path = re.sub(r"/+", "/", urlparse(decoded).path.rstrip("/"))
    if not path:
        return False
    return posixpath.normpath(path) != path
