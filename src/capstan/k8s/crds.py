"""CustomResourceDefinitions: loading them from folders (I/O) and turning each served version's
``openAPIV3Schema`` into a strict JSON Schema (pure).

Strict means what the API server does with a structural schema: a field the schema does not name is an error,
unless the object carries ``x-kubernetes-preserve-unknown-fields`` or declares ``additionalProperties``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from capstan.errors import InvalidParameterValue

Schema = dict[str, Any]
SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it: CRDs run to tens of thousands of lines."""

_PASSED_THROUGH = ("enum", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength",
                   "maxLength", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
                   "multipleOf", "required")


_ANY_OBJECT: Schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
"""What a served version without a schema accepts."""


@dataclass(frozen=True)
class CustomResourceSchema:
    """One served version of one CRD: what a document with ``apiVersion: group/version`` and ``kind`` is checked
    against. ``schema`` is the CRD's ``openAPIV3Schema`` as written (CEL rules included)."""

    group: str
    version: str
    kind: str
    crd_name: str
    schema: Mapping[str, Any]

    @property
    def api_version(self) -> str:
        """``group/version``, as a document spells it."""
        return f"{self.group}/{self.version}"


@dataclass(frozen=True)
class CrdSet:
    """The custom resources known to a validation run, keyed by (apiVersion, kind)."""

    by_type: Mapping[tuple[str, str], CustomResourceSchema] = field(default_factory=dict)

    def find(self, api_version: str, kind: str) -> CustomResourceSchema | None:
        """The served version for this apiVersion and kind, or None."""
        return self.by_type.get((api_version, kind))

    def kinds(self, api_version: str) -> list[str]:
        """Kinds served under ``api_version`` (for messages)."""
        return sorted(kind for (version, kind) in self.by_type if version == api_version)

    def __len__(self) -> int:
        return len(self.by_type)


def crd_set_from_documents(documents: Iterable[Any]) -> CrdSet:
    """Index the CRDs among parsed documents (others are ignored); only served versions count."""
    found: dict[tuple[str, str], CustomResourceSchema] = {}
    for doc in documents:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc.get("spec") or {}
        group, kind = spec.get("group", ""), (spec.get("names") or {}).get("kind", "")
        name = (doc.get("metadata") or {}).get("name", f"{kind}.{group}")
        for version in spec.get("versions") or []:
            if not version.get("served", True):
                continue
            schema = (version.get("schema") or {}).get("openAPIV3Schema") or _ANY_OBJECT
            crd = CustomResourceSchema(group, version["name"], kind, name, schema)
            found[(crd.api_version, kind)] = crd
    return CrdSet(found)


def load_crds(folders: Sequence[Path]) -> CrdSet:
    """Read every ``*.yaml``/``*.yml`` under each folder (recursively, multi-document) and index its CRDs.

    A missing folder or a file that is not YAML is an `InvalidParameterValue` naming it."""
    documents: list[Any] = []
    for folder in folders:
        if not folder.is_dir():
            raise InvalidParameterValue(f"--crds {folder}: no such folder")
        for path in sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()):
            try:
                documents.extend(yaml.load_all(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER))
            except yaml.YAMLError as exc:
                raise InvalidParameterValue(f"{path}: not valid YAML: {_one_line(exc)}") from None
    return crd_set_from_documents(documents)


def strict_json_schema(node: Mapping[str, Any], *, root: bool = False) -> Schema:
    """The JSON Schema (draft 2020-12) that checks a value the way the API server checks it against this
    structural schema node: unknown fields rejected, ``nullable`` and ``x-kubernetes-int-or-string`` honoured.
    CEL rules are not part of it (see `capstan.k8s.cel`)."""
    out: Schema = {key: node[key] for key in _PASSED_THROUGH if key in node}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = python_pattern(out["pattern"])
    types = _types(node)
    if types is not None:
        out["type"] = types
    if "properties" in node:
        out["properties"] = {name: strict_json_schema(sub) for name, sub in node["properties"].items()}
    if "items" in node and isinstance(node["items"], Mapping):
        out["items"] = strict_json_schema(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [_combinator_branch(sub) for sub in node[key]]
    if "not" in node:
        out["not"] = _combinator_branch(node["not"])
    _close_object(node, out, root=root)
    return out


def _types(node: Mapping[str, Any]) -> list[str] | None:
    if node.get("x-kubernetes-int-or-string"):
        types = ["integer", "string"]
    elif "type" in node:
        types = [node["type"]]
    else:
        return None
    if node.get("nullable"):
        types.append("null")
    return types


def python_pattern(pattern: str) -> str:
    """A CRD's regular expression (Go's RE2 syntax) in Python's: RE2 lets an inline flag such as ``(?i)`` stand
    mid-pattern, where it applies to the rest; Python wants a scoped group, ``^(?i:[a-z]...)``. Pure."""
    for flag in ("(?i)", "(?s)", "(?m)"):
        at = pattern.find(flag)
        if at <= 0:
            continue
        scoped = f"{pattern[:at]}(?{flag[2]}:{pattern[at + len(flag):]})"
        try:
            re.compile(scoped)
        except re.error:  # the flag sat inside a group: make it global instead (broader, never stricter)
            scoped = flag + pattern[:at] + pattern[at + len(flag):]
        pattern = scoped
    return pattern


def _combinator_branch(node: Mapping[str, Any]) -> Schema:
    # Branches of allOf/anyOf/oneOf in a structural schema only constrain values; they never declare fields,
    # so closing them would reject fields declared beside them.
    out = {key: node[key] for key in _PASSED_THROUGH if key in node}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = python_pattern(out["pattern"])
    if "properties" in node:
        out["properties"] = {name: _combinator_branch(sub) for name, sub in node["properties"].items()}
    if "items" in node and isinstance(node["items"], Mapping):
        out["items"] = _combinator_branch(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            out[key] = [_combinator_branch(sub) for sub in node[key]]
    return out


def _close_object(node: Mapping[str, Any], out: Schema, *, root: bool) -> None:
    """Decide which fields an object accepts beyond those it names."""
    embedded = bool(node.get("x-kubernetes-embedded-resource"))
    if root or embedded:
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        # ObjectMeta is checked against the built-in schema (`capstan.k8s.validate`), whatever the CRD says of it.
        props["metadata"] = {"type": "object"}
    extra = node.get("additionalProperties")
    if isinstance(extra, Mapping):
        out["additionalProperties"] = strict_json_schema(extra)
    elif extra is not None:
        out["additionalProperties"] = bool(extra)
    elif node.get("x-kubernetes-preserve-unknown-fields"):
        return
    elif "properties" in out or node.get("type") == "object":
        out["additionalProperties"] = False


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
