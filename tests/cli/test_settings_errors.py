"""Bad settings in the environment are one line on stderr naming the variable, a non-zero exit and no traceback;
nothing is created where the user did not ask for it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from capstan.errors import InvalidParameterValue
from capstan.services import Services
from capstan.settings import Settings, check_db_url
from helpers.server import capstan_command, clean_env, start_server

SHAPED_TOKEN = "cap_" + "x" * 40


def capstan(home: Path, extra: dict[str, str], *args: str, prefix: list[str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or capstan_command()), *(args or ("runs", "list"))],
                          env=clean_env(home, extra), capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("value", "expected"), [
    ("mysql://user@host/db", "mysql databases are not supported"),
    ("garbage", "'garbage' is not a database URL"),
    ("postgresql+psycopg2://u:s3cret@h/db", "driver 'psycopg2' is not supported"),
    ("sqlite://host/x.db", "Invalid SQLite URL"),
])
def test_bad_db_url(tmp_path: Path, value: str, expected: str) -> None:
    line = assert_one_line_error(capstan(tmp_path / "home", {"CAPSTAN_DB_URL": value}), "CAPSTAN_DB_URL", expected)
    assert "s3cret" not in line


def test_sqlite_file_in_a_missing_folder_is_an_error_not_a_new_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "deeper"
    result = capstan(tmp_path / "home", {"CAPSTAN_DB_URL": f"sqlite:///{missing / 'capstan.db'}"})
    assert_one_line_error(result, "CAPSTAN_DB_URL", f"the folder {missing} does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_the_home_itself_is_created(tmp_path: Path) -> None:
    home = tmp_path / "new" / "home"
    result = capstan(home, {})
    assert result.returncode == 0, result.stderr
    assert (home / "capstan.db").is_file()


def test_home_that_is_a_file_or_cannot_be_created(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert_one_line_error(capstan(a_file, {}), "CAPSTAN_HOME", f"{a_file} is a file, not a folder")
    assert_one_line_error(capstan(a_file / "sub", {}), "CAPSTAN_HOME", "cannot create the folder", "Not a directory")
    assert a_file.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_home_that_is_not_writable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        assert_one_line_error(capstan(locked / "home", {}), "CAPSTAN_HOME", "cannot create the folder")
        assert_one_line_error(capstan(locked, {}), "CAPSTAN_HOME", "is not writable")
    finally:
        locked.chmod(0o700)


def test_gs_artifacts_are_refused_with_what_works(tmp_path: Path) -> None:
    assert_one_line_error(capstan(tmp_path / "home", {"CAPSTAN_ARTIFACTS": "gs://bucket/prefix"}),
                          "CAPSTAN_ARTIFACTS", "gs:// storage is not supported", "s3://bucket/prefix")


WITHOUT_S3FS = """
import sys

class NoS3fs:
    def find_spec(self, name, path=None, target=None):
        if name == "s3fs" or name.startswith("s3fs."):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoS3fs())
from capstan.cli.main import main
main(sys.argv[1:])
"""


def test_s3_artifacts_without_s3fs_name_the_extra(tmp_path: Path) -> None:
    result = capstan(tmp_path / "home", {"CAPSTAN_ARTIFACTS": "s3://bucket/prefix"}, "runs", "list",
                     prefix=[sys.executable, "-c", WITHOUT_S3FS])
    assert_one_line_error(result, "CAPSTAN_ARTIFACTS", "s3fs", "pip install 'capstan[s3]'")


def test_artifacts_folder_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_one_line_error(capstan(tmp_path / "home", {"CAPSTAN_ARTIFACTS": str(a_file)}), "CAPSTAN_ARTIFACTS",
                          "is a file, not a folder")


def test_garbage_token_is_refused_without_repeating_it(tmp_path: Path) -> None:
    line = assert_one_line_error(capstan(tmp_path / "home", {"CAPSTAN_TOKEN": "hunter2-garbage"}),
                                 "CAPSTAN_TOKEN", "does not look like a Capstan token")
    assert "hunter2" not in line


def test_token_the_server_rejects(tmp_path: Path) -> None:
    home = tmp_path / "server"
    services = Services.open(Settings.for_home(home))
    services.auth.create_user("root", admin=True)  # from now on the server requires a credential
    services.close()
    with start_server(home) as server:
        result = server.remote_cli("runs", "list", token=SHAPED_TOKEN, check=False)
    assert_one_line_error(result, "invalid token")


def test_the_sdk_raises_the_same_errors() -> None:
    for env, field in (({"CAPSTAN_DB_URL": "mysql://x"}, "CAPSTAN_DB_URL"),
                       ({"CAPSTAN_ARTIFACTS": "gs://b/p"}, "CAPSTAN_ARTIFACTS"),
                       ({"CAPSTAN_TOKEN": "garbage"}, "CAPSTAN_TOKEN")):
        with pytest.raises(InvalidParameterValue, match=f"^{field}: "):
            Settings.from_env({"CAPSTAN_HOME": "/tmp/unused", **env})


def test_postgres_urls_mean_the_shipped_driver() -> None:
    assert check_db_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert check_db_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert check_db_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert check_db_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
