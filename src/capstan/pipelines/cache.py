"""Cache keys (pure): a step's output can be reused when its code, its parameters and its inputs are unchanged.

The key is the sha256 of the project, the step's code hash, its environment and its argument bindings in which
every reference to an upstream output is replaced by that output's content digest. Two runs that feed a step the
same bytes therefore share the key even when the upstream step itself was re-run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

from capstan.pipelines.graph import Binding


def _canonical(binding: Binding, digests: Mapping[str, str]) -> Any:
    if "r" in binding:
        return {"r": digests[binding["r"]], "p": binding.get("p") or []}
    if "l" in binding:
        return {"l": [_canonical(b, digests) for b in binding["l"]]}
    if "t" in binding:
        return {"t": [_canonical(b, digests) for b in binding["t"]]}
    if "d" in binding:
        return {"d": [[k, _canonical(b, digests)] for k, b in binding["d"]]}
    return binding


def cache_key(*, project: str, code_hash: str, env: Mapping[str, str], args: Mapping[str, Binding],
              digests: Mapping[str, str]) -> str:
    """The cache key of a step call; ``digests`` maps each upstream node id to its output's digest."""
    payload = {"project": project, "code": code_hash, "env": sorted(env.items()),
               "args": {name: _canonical(b, digests) for name, b in args.items()}}
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()
