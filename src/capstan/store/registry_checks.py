"""Input validation for the model registry (pure), following MLflow's rules for names, tags, aliases and stages.

Every failure is an `InvalidParameterValue` whose message starts with the offending field.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from capstan.artifacts.paths import has_relative_references, is_local_uri
from capstan.errors import InvalidParameterValue
from capstan.names import check_characters
from capstan.registry.records import STAGES
from capstan.tracking.search_syntax import decode_page_token

__all__ = ["ACTIVE_STAGES", "STAGES"]

ACTIVE_STAGES = ("Staging", "Production")
MAX_MODELS_PER_PAGE = 1000
MAX_VERSIONS_PER_PAGE = 200_000
MAX_NAME_LENGTH = 256
MAX_TAG_KEY_LENGTH = 250
MAX_TAG_VALUE_LENGTH = 100_000
MAX_ALIAS_LENGTH = 255
MAX_VERSION = 2**63 - 1  # the version column is a signed 64-bit integer

_TAG_KEY = re.compile(r"^[/\w.\- :]*$")
_ALIAS = re.compile(r"^[\w\-]*$")
_VERSION_ALIAS = re.compile(r"^[vV]\d+$")
_STAGE_BY_LOWER = {s.lower(): s for s in STAGES}


def _resolves_elsewhere(name: str) -> bool:
    norm = posixpath.normpath(name)
    return norm != name or norm == "." or norm.startswith("..") or norm.startswith("/")


def model_name(name: object, *, field_name: str = "name") -> str:
    """A registered-model name: non-empty, no ``/`` or ``:``, not a path that normalises to something else."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterValue(f"{field_name}: missing value; a registered model needs a name")
    if "/" in name or ":" in name:
        raise InvalidParameterValue(f"{field_name}: invalid model name {name!r}; names cannot contain '/' or ':'")
    if _resolves_elsewhere(name):
        raise InvalidParameterValue(f"{field_name}: invalid model name {name!r}; it would resolve to "
                                    f"{posixpath.normpath(name)!r} when treated as a path")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidParameterValue(f"{field_name}: longer than {MAX_NAME_LENGTH} characters")
    return check_characters(name, field_name)


def project_name(name: object) -> str:
    """A project name: a non-empty string of at most 256 characters."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidParameterValue("project: missing value; a registered model belongs to a project")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidParameterValue(f"project: longer than {MAX_NAME_LENGTH} characters")
    return check_characters(name, "project")


def tag_key(key: object) -> str:
    """A tag key: alphanumerics, ``_ - . / :`` and spaces, at most 250 characters, not path-ambiguous."""
    if not isinstance(key, str) or not key:
        raise InvalidParameterValue("key: missing value; a tag needs a key")
    if not _TAG_KEY.match(key):
        raise InvalidParameterValue(f"key: invalid tag key {key!r}; names may only contain alphanumerics, "
                                    "underscores (_), dashes (-), periods (.), spaces ( ), colons (:) and slashes (/)")
    if _resolves_elsewhere(key):
        raise InvalidParameterValue(f"key: invalid tag key {key!r}; it would resolve to "
                                    f"{posixpath.normpath(key)!r} when treated as a path")
    if len(key) > MAX_TAG_KEY_LENGTH:
        raise InvalidParameterValue(f"key: tag key longer than {MAX_TAG_KEY_LENGTH} characters")
    return key


def tag(key: object, value: object) -> None:
    """A tag: a valid key and a string value of at most 100,000 characters."""
    tag_key(key)
    if not isinstance(value, str):
        raise InvalidParameterValue(f"value: tag {key!r} needs a string value, got {type(value).__name__}")
    if len(value) > MAX_TAG_VALUE_LENGTH:
        raise InvalidParameterValue(f"value: tag {key!r} value longer than {MAX_TAG_VALUE_LENGTH} characters")


def tags(items: Mapping[str, str] | None) -> dict[str, str]:
    """Validated copy of a tag mapping."""
    out: dict[str, str] = {}
    for key, value in (items or {}).items():
        tag(key, value)
        out[key] = value
    return out


def version(value: object) -> int:
    """A version number: a positive integer (digit strings are accepted, as MLflow's API sends strings)."""
    if isinstance(value, bool):
        raise InvalidParameterValue(f"version: must be an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        text = value.strip()
        number = int(text) if len(text) <= 20 else MAX_VERSION + 1  # int() refuses past 4,300 digits
    else:
        raise InvalidParameterValue(f"version: must be an integer, got {value!r}")
    if number < 1:
        raise InvalidParameterValue(f"version: must be 1 or more, got {number}")
    if number > MAX_VERSION:
        raise InvalidParameterValue(f"version: must be at most {MAX_VERSION} (a 64-bit integer), got {number}")
    return number


def alias(name: object, *, reserved_check: bool = False) -> str:
    """An alias name: alphanumerics, ``_`` and ``-``; when set, not ``latest`` and not ``v<digits>``."""
    if not isinstance(name, str) or not name:
        raise InvalidParameterValue("alias: missing value; registered model alias name cannot be empty")
    if not _ALIAS.match(name):
        raise InvalidParameterValue(f"alias: invalid alias name {name!r}; names may only contain alphanumerics, "
                                    "underscores (_) and dashes (-)")
    if len(name) > MAX_ALIAS_LENGTH:
        raise InvalidParameterValue(f"alias: longer than {MAX_ALIAS_LENGTH} characters")
    if reserved_check:
        if name.lower() == "latest":
            raise InvalidParameterValue("alias: 'latest' alias name (case insensitive) is reserved")
        if _VERSION_ALIAS.match(name):
            raise InvalidParameterValue(f"alias: version alias name {name!r} is reserved")
    return name


def stage(name: object) -> str:
    """The canonical spelling of a stage name (matched case-insensitively)."""
    canonical = _STAGE_BY_LOWER.get(name.lower()) if isinstance(name, str) else None
    if canonical is None:
        raise InvalidParameterValue(f"stage: invalid Model Version stage {name!r}; must be one of "
                                    f"{', '.join(STAGES)}")
    return canonical


def max_results(value: object, limit: int) -> int:
    """A page size between 1 and ``limit``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1 or value > limit:
        raise InvalidParameterValue(f"max_results: must be an integer from 1 to {limit}, got {value!r}")
    return value


def page_offset(token: str | None) -> int:
    """Offset encoded in a page token (0 when none)."""
    return decode_page_token(token)


def version_fields(*, source: object, run_id: object, model_id: object, user_id: object) -> None:
    """The scalar fields of a new model version."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidParameterValue("source: missing value; a model version needs a source URI")
    if run_id is not None and (not isinstance(run_id, str) or len(run_id) > 32):
        raise InvalidParameterValue(f"run_id: must be a run id of at most 32 characters, got {run_id!r}")
    if model_id is not None and (not isinstance(model_id, str) or len(model_id) > 64):
        raise InvalidParameterValue(f"model_id: must be a logged model id of at most 64 characters, "
                                    f"got {model_id!r}")
    if not isinstance(user_id, str) or len(user_id) > MAX_NAME_LENGTH:
        raise InvalidParameterValue(f"user_id: must be a string of at most {MAX_NAME_LENGTH} characters")
    model_version_source(source)


def model_version_source(source: str) -> str:
    """A model-version source the server may hand out and read through (MLflow's rules, stricter on local paths).

    Refused: control characters; a local path or ``file:`` URI (every run and logged model of this server keeps
    its files in the artifact store, so no local path can be inside one); and any URI with ``..``/``.`` path
    segments, encoded traversal (``..%2f``) or NUL, whatever its scheme (``mlflow-artifacts:``, ``s3:``,
    ``dbfs:``...). The messages keep MLflow's wording, which its clients look for.
    """
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in source):
        raise InvalidParameterValue(f"Invalid model version source: {source!r}. source: control characters are "
                                    "not allowed")
    if is_local_uri(source):
        raise InvalidParameterValue(
            f"Invalid model version source: '{source}'. To use a local path as a model version source, the path "
            "has to be inside the artifact directory of the run it came from, and runs on this server keep their "
            "artifacts in its artifact store: give runs:/<run_id>/<path>, models:/<model_id> or the run's "
            "mlflow-artifacts: URI instead")
    if has_relative_references(source):
        raise InvalidParameterValue(
            f"Invalid model version source: '{source}'. If supplying a source as an http, https, local file "
            "path, ftp, object store or mlflow-artifacts URI, give an absolute path without relative path "
            "references ('..', '.', encoded '..%2f') or NUL characters")
    return source
