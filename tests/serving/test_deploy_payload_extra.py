"""A deployment that logs payloads is refused at apply time, naming the extra, when pyarrow is not installed."""

from __future__ import annotations

import sys

import pytest

from capstan.errors import InvalidParameterValue
from capstan.serving.manage import DeploymentManager
from capstan.serving.spec import parse_spec


def _unused(*_args: object, **_kwargs: object) -> object:
    raise AssertionError("a refused spec must not reach the store, the resolver or the admission")


def test_payload_logging_without_pyarrow_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # `import pyarrow` now raises ImportError
    manager = DeploymentManager(_unused, resolve=_unused, admission=_unused,  # type: ignore[arg-type]  # never called
                                events=_unused, outcomes=_unused)  # type: ignore[arg-type]  # never called
    spec = parse_spec({"name": "logged", "model": "models:/m/1", "payload_logging": {"sample_rate": 0.5}})
    with pytest.raises(InvalidParameterValue, match=r"^spec\.payload_logging\.sample_rate: .*capstan\[parquet\]"):
        manager.apply(spec, "p")
