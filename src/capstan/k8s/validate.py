"""Strict validation of Kubernetes manifests, listing every error with its document and field path.

Built-in kinds are checked against the official OpenAPI schema of the chosen Kubernetes version, in the strict
form that kubernetes-validate ships (unknown fields are errors). Custom resources are checked against their CRD's
``openAPIV3Schema`` for the document's apiVersion, strictly, plus the schema's CEL rules (`capstan.k8s.cel`). A kind
with neither a built-in schema nor a CRD is an error.

`check_documents` and `validate_documents` are functions of the parsed documents, the CRDs and the version; the
schemas of kubernetes-validate are read once from its package. `read_manifests` and `capstan.k8s.crds.load_crds`
do the file reading.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from capstan.errors import InvalidParameterValue, InvalidState
from capstan.k8s.cel import K8S_EXTRA, PathSegment, apply_defaults, check_rules
from capstan.k8s.crds import SAFE_LOADER, CrdSet, CustomResourceSchema, strict_json_schema

if TYPE_CHECKING:
    import jsonschema

DEFAULT_K8S_VERSION = "1.33"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
_OBJECT_META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_IDENTIFIER = re.compile(r"^[A-Za-z_$][\w$-]*$")
_STRICT_DIR = re.compile(r"^v(\d+)\.(\d+)\.\d+-local-strict$")


@dataclass(frozen=True)
class ValidationError:
    """One problem in one document: ``index`` is its position in the input, ``path`` the field
    (``spec.template.spec.containers[0].image``; empty for the whole document)."""

    index: int
    kind: str
    name: str
    path: str
    message: str


@dataclass(frozen=True)
class ValidationWarning(ValidationError):
    """Something not checked, such as a CEL rule that uses a function the CEL library lacks."""


@dataclass(frozen=True)
class ValidationReport:
    """What `check_documents` found, and the Kubernetes schema version it used (``1.33``)."""

    errors: list[ValidationError] = field(default_factory=list)
    warnings: list[ValidationWarning] = field(default_factory=list)
    schema_version: str = ""


@dataclass(frozen=True)
class Manifest:
    """A parsed document and where it came from (``number`` counts from 1 within its file)."""

    file: Path
    number: int
    documents_in_file: int
    document: Any


def validate_documents(documents: Sequence[Any], *, k8s_version: str = DEFAULT_K8S_VERSION,
                       crds: CrdSet | None = None) -> list[ValidationError]:
    """Every error in ``documents`` (parsed manifests), checked strictly; an empty list means all are valid."""
    return check_documents(documents, k8s_version=k8s_version, crds=crds).errors


def check_documents(documents: Sequence[Any], *, k8s_version: str = DEFAULT_K8S_VERSION,
                    crds: CrdSet | None = None) -> ValidationReport:
    """Errors and warnings for ``documents``. A ``k8s_version`` the installed kubernetes-validate has no schemas
    for is an `InvalidParameterValue`; a missing kubernetes-validate is an `InvalidState` naming the extra."""
    schema_dir = _schema_dir(k8s_version)
    crds = crds if crds is not None else CrdSet()
    errors: list[ValidationError] = []
    warnings: list[ValidationWarning] = []
    for index, doc in enumerate(documents):
        found_errors, found_warnings = _check_one(index, doc, schema_dir, crds)
        errors.extend(found_errors)
        warnings.extend(found_warnings)
    return ValidationReport(errors, warnings, _version_of(schema_dir))


def _check_one(index: int, doc: Any, schema_dir: str,
               crds: CrdSet) -> tuple[list[ValidationError], list[ValidationWarning]]:
    if not isinstance(doc, dict):
        return [ValidationError(index, "", "", "", f"a manifest is a mapping, not {_json_type(doc)}")], []
    kind, name = str(doc.get("kind") or ""), _name(doc)

    def err(path: Sequence[PathSegment], message: str) -> ValidationError:
        return ValidationError(index, kind, name, format_path(path), message)

    missing = [key for key in ("apiVersion", "kind") if not isinstance(doc.get(key), str) or not doc.get(key)]
    if missing:
        return [err((key,), "required field is missing") for key in missing], []
    api_version = str(doc["apiVersion"])
    errors = _name_errors(doc, err)
    builtin = _builtin_validator(schema_dir, kind, api_version)
    if builtin is not None:
        return _by_path(errors + _schema_errors(builtin, doc, err)), []
    crd = crds.find(api_version, kind)
    if crd is None:
        return [err((), _unknown_kind_message(kind, api_version, schema_dir, crds))], []
    errors += _schema_errors(_crd_validator(crd), doc, err)
    errors += _schema_errors(_meta_validator(schema_dir), doc.get("metadata") or {}, err, prefix=("metadata",))
    warnings: list[ValidationWarning] = []
    for outcome in check_rules(apply_defaults(doc, crd.schema), crd.schema):
        if outcome.evaluated:
            errors.append(err(outcome.path, outcome.message))
        else:
            warnings.append(ValidationWarning(index, kind, name, format_path(outcome.path),
                                              f"{outcome.message} (rule: {outcome.rule})"))
    return _by_path(errors), warnings


def _by_path(errors: list[ValidationError]) -> list[ValidationError]:
    return sorted(errors, key=lambda e: (e.path, e.message))


def _name_errors(doc: Mapping[str, Any], err: Any) -> list[ValidationError]:
    meta = doc.get("metadata")
    if not isinstance(meta, dict) or not (meta.get("name") or meta.get("generateName")):
        return [err(("metadata", "name"), "required field is missing (or metadata.generateName)")]
    return []


def _unknown_kind_message(kind: str, api_version: str, schema_dir: str, crds: CrdSet) -> str:
    served = crds.kinds(api_version)
    hint = f"; CRDs loaded for {api_version} serve {', '.join(served)}" if served else ""
    return (f"unknown kind {kind} in {api_version}: not a built-in kind of Kubernetes {_version_of(schema_dir)} "
            f"and no CRD for it ({len(crds)} CRD versions loaded){hint}")


def _schema_errors(validator: jsonschema.protocols.Validator, value: Any, err: Any,
                   prefix: tuple[PathSegment, ...] = ()) -> list[ValidationError]:
    found: list[ValidationError] = []
    for error in validator.iter_errors(value):
        for path, message in _explain(error):
            found.append(err((*prefix, *path), message))
    return found


def _explain(error: jsonschema.ValidationError) -> list[tuple[tuple[PathSegment, ...], str]]:
    """One schema error as (field path, message) pairs: one pair per unknown or missing field."""
    import jsonschema

    path = tuple(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and error.validator_value is False and isinstance(instance, dict):
        known = set((error.schema.get("properties") or {}) if isinstance(error.schema, Mapping) else ())
        return [((*path, key), "unknown field") for key in instance if key not in known]
    if error.validator == "required" and isinstance(instance, dict):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        return [((*path, key), "required field is missing") for key in required if key not in instance]
    if error.validator == "type":
        expected = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(str(t) for t in expected if t != "null")
        return [(path, f"wrong type: expected {wanted}, got {_json_type(instance)} ({_short(instance)})")]
    if error.validator in ("anyOf", "oneOf") and error.context:
        return _explain(jsonschema.exceptions.best_match(error.context))
    if error.validator == "enum":
        return [(path, f"{_short(instance)} is not one of {', '.join(map(_short, error.validator_value))}")]
    return [(path, " ".join(error.message.split()))]


def format_path(segments: Iterable[PathSegment]) -> str:
    """``("spec", "containers", 0, "image")`` → ``spec.containers[0].image``; keys that are not identifiers
    (label names) are quoted: ``metadata.labels["app.kubernetes.io/name"]``."""
    out = ""
    for segment in segments:
        if isinstance(segment, int):
            out += f"[{segment}]"
        elif _IDENTIFIER.match(segment):
            out += f".{segment}" if out else segment
        else:
            out += f"[{json.dumps(segment)}]"
    return out


def read_manifests(target: Path) -> list[Manifest]:
    """Parse every ``*.yaml``/``*.yml``/``*.json`` file under ``target`` (or ``target`` itself), skipping empty
    YAML documents. A missing path or unparsable file is an `InvalidParameterValue` naming it."""
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    elif target.is_file():
        files = [target]
    else:
        raise InvalidParameterValue(f"{target}: no such file or folder")
    manifests: list[Manifest] = []
    for path in files:
        documents = _parse_file(path)
        manifests.extend(Manifest(path, number, len(documents), doc) for number, doc in enumerate(documents, 1))
    return manifests


def _parse_file(path: Path) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            parsed = json.loads(text)
            return parsed if isinstance(parsed, list) else [parsed]
        return [doc for doc in yaml.load_all(text, Loader=SAFE_LOADER) if doc is not None]
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise InvalidParameterValue(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                                    f"{' '.join(str(exc).split())}") from None


def _schema_dir(k8s_version: str) -> str:
    """The strict schema folder for the newest release not newer than ``k8s_version`` (``1.33``, ``v1.33.2``)."""
    wanted = re.match(r"^v?(\d+)\.(\d+)", k8s_version.strip())
    if wanted is None:
        raise InvalidParameterValue(f"--k8s-version {k8s_version!r}: expected MAJOR.MINOR such as 1.33")
    target = (int(wanted.group(1)), int(wanted.group(2)))
    available = _strict_dirs()
    usable = [version for version in available if version <= target]
    if not usable or target > max(available):
        low, high = min(available), max(available)
        raise InvalidParameterValue(f"--k8s-version {k8s_version}: the installed kubernetes-validate has schemas "
                                    f"for Kubernetes {low[0]}.{low[1]} to {high[0]}.{high[1]}")
    return available[max(usable)]


def _version_of(schema_dir: str) -> str:
    match = _STRICT_DIR.match(schema_dir)
    return f"{match.group(1)}.{match.group(2)}" if match else schema_dir


@functools.lru_cache(maxsize=1)
def _strict_dirs() -> dict[tuple[int, int], str]:
    """The strict schema folders kubernetes-validate ships, by (major, minor)."""
    found: dict[tuple[int, int], str] = {}
    for entry in _schemas_root().iterdir():
        match = _STRICT_DIR.match(entry.name)
        if match:
            found[(int(match.group(1)), int(match.group(2)))] = entry.name
    return found


def _schemas_root() -> Any:
    import importlib.resources

    try:
        return importlib.resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")
    except ModuleNotFoundError:
        raise InvalidState("k8s validate needs kubernetes-validate, which is not installed: "
                           f"pip install 'capstan[{K8S_EXTRA}]'") from None


@functools.lru_cache(maxsize=64)
def _read_schema(schema_dir: str, filename: str) -> dict[str, Any] | None:
    resource = _schemas_root().joinpath(schema_dir).joinpath(filename)
    if not resource.is_file():
        return None
    loaded: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return loaded


@functools.lru_cache(maxsize=256)
def _builtin_validator(schema_dir: str, kind: str, api_version: str) -> jsonschema.protocols.Validator | None:
    """The validator for a top-level built-in kind, or None when Kubernetes has no such kind in that version."""
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = _read_schema(schema_dir, f"{kind.lower()}-{group_version}.json")
    if schema is None:
        return None
    props = schema.get("properties") or {}
    if kind not in (props.get("kind") or {}).get("enum", ()) or api_version not in (
            props.get("apiVersion") or {}).get("enum", ()):
        return None  # a sub-object's schema (affinity-v1.json), or another group with the same short name
    return _validator(schema_dir, schema)


@functools.lru_cache(maxsize=8)
def _meta_validator(schema_dir: str) -> jsonschema.protocols.Validator:
    return _validator(schema_dir, {"$id": "https://kubernetes.io/api/capstan/objectmeta", "$ref": _OBJECT_META})


def _validator(schema_dir: str, schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    import jsonschema
    from referencing import Registry, Resource

    definitions = _read_schema(schema_dir, "_definitions.json")
    registry: Registry[Any] = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _crd_validator(crd: CustomResourceSchema) -> jsonschema.protocols.Validator:
    import jsonschema

    return jsonschema.Draft202012Validator(strict_json_schema(crd.schema, root=True))


def _name(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    if isinstance(meta, dict):
        return str(meta.get("name") or meta.get("generateName") or "")
    return ""


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."
