"""Every ``CAPSTAN_*`` setting is a typed `Settings` field; errors name the variable only when it was set; the
pipeline worker restores the process environment after a task with public `os.environ` operations only."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue
from capstan.pipelines.worker import _restore_environ
from capstan.services import check_artifact_root
from capstan.settings import ENV_VARIABLES, Settings
from capstan.store.engine import ensure_home


def test_every_variable_is_a_field() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(ENV_VARIABLES) <= fields
    assert "extra" not in fields
    assert all(name.startswith("CAPSTAN_") for name in ENV_VARIABLES.values())


def test_server_host_and_experiment(tmp_path: Path) -> None:
    s = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_SERVER_HOST": "0.0.0.0",
                           "CAPSTAN_EXPERIMENT": "exp-1", "CAPSTAN_SOMETHING_ELSE": "x"})
    assert (s.server_host, s.experiment) == ("0.0.0.0", "exp-1")
    assert s.env_set == {"CAPSTAN_HOME", "CAPSTAN_SERVER_HOST", "CAPSTAN_EXPERIMENT"}
    empty = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_EXPERIMENT": ""})
    assert (empty.server_host, empty.experiment) == (None, None)
    assert Settings.for_home(tmp_path).env_set == frozenset()


def test_source_of_names_the_variable_only_when_set(tmp_path: Path) -> None:
    from_env = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_ARTIFACTS": str(tmp_path / "a")})
    assert from_env.source_of("artifacts") == "CAPSTAN_ARTIFACTS"
    assert from_env.source_of("home") == "CAPSTAN_HOME"
    assert from_env.source_of("db_url") == "db_url"
    assert Settings.for_home(tmp_path).source_of("artifacts") == "artifacts"
    with pytest.raises(ValueError, match="not a Settings field"):
        from_env.source_of("is_sqlite")


def test_errors_name_the_field_for_settings_built_in_code(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InvalidParameterValue, match=r"^home: .* is a file"):
        ensure_home(dataclasses.replace(Settings.for_home(tmp_path), home=a_file))
    with pytest.raises(InvalidParameterValue, match=r"^CAPSTAN_HOME: .* is a file"):
        ensure_home(Settings.from_env({"CAPSTAN_HOME": str(a_file)}))
    with pytest.raises(InvalidParameterValue, match=r"^artifacts: .* is a file"):
        check_artifact_root(Settings.for_home(tmp_path / "h", artifacts=str(a_file)))
    with pytest.raises(InvalidParameterValue, match=r"^CAPSTAN_ARTIFACTS: .* is a file"):
        check_artifact_root(Settings.from_env({"CAPSTAN_HOME": str(tmp_path / "h"), "CAPSTAN_ARTIFACTS": str(a_file)}))


def test_worker_restores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSTAN_T_KEEP", "1")
    monkeypatch.setenv("CAPSTAN_T_CHANGE", "before")
    monkeypatch.setenv("CAPSTAN_T_REMOVE", "there")
    monkeypatch.setenv("CAPSTAN_T_BYTES", os.fsdecode(b"\xff\xfe"))  # not UTF-8: kept as surrogates
    monkeypatch.delenv("CAPSTAN_T_ADDED", raising=False)
    before = dict(os.environ)
    os.environ.update({"CAPSTAN_T_ADDED": "new", "CAPSTAN_T_CHANGE": "after", "CAPSTAN_T_BYTES": "x"})
    del os.environ["CAPSTAN_T_REMOVE"]
    _restore_environ(before)
    assert dict(os.environ) == before
    assert os.environb[b"CAPSTAN_T_BYTES"] == b"\xff\xfe"
    assert "CAPSTAN_T_ADDED" not in os.environ and os.environ["CAPSTAN_T_REMOVE"] == "there"
