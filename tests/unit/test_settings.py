"""Settings come from one place, with the documented defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue
from capstan.settings import Settings, parse_size

TOKEN = "cap_" + "a" * 40  # the shape `capstan tokens create` prints


def test_defaults_live_under_home(tmp_path: Path) -> None:
    s = Settings.from_env({"CAPSTAN_HOME": str(tmp_path)})
    assert s.home == tmp_path.resolve()
    assert s.db_url == f"sqlite:///{tmp_path.resolve() / 'capstan.db'}"
    assert s.artifacts == str(tmp_path.resolve() / "artifacts")
    assert s.url is None and s.token is None and s.is_sqlite


def test_env_overrides(tmp_path: Path) -> None:
    s = Settings.from_env({
        "CAPSTAN_HOME": str(tmp_path), "CAPSTAN_DB_URL": "postgresql+psycopg://u@h/db",
        "CAPSTAN_ARTIFACTS": "s3://bucket/prefix", "CAPSTAN_S3_ENDPOINT": "http://127.0.0.1:9000",
        "CAPSTAN_URL": "http://127.0.0.1:8080/", "CAPSTAN_TOKEN": TOKEN, "CAPSTAN_ARTIFACT_MAX_BYTES": "10MB",
    })
    assert s.db_url.startswith("postgresql") and not s.is_sqlite
    assert s.artifacts == "s3://bucket/prefix" and s.s3_endpoint == "http://127.0.0.1:9000"
    assert s.url == "http://127.0.0.1:8080" and s.token == TOKEN
    assert s.artifact_max_bytes == 10 * 1000 * 1000


def test_bad_size_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterValue, match="CAPSTAN_ARTIFACT_MAX_BYTES"):
        Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_ARTIFACT_MAX_BYTES": "lots"})
    assert parse_size("2g") == 2 * 1000**3
    assert parse_size("512Mi") == 512 * 1024**2
