"""The admin CLI: users, tokens, audit, events, gc, db upgrade, server; tables, --json and one-line errors.

Most commands run in-process through ``capstan.cli.main.main`` (the console-script entry point, which turns
errors into one line); a few run as real subprocesses where that matters (``--follow``, tracebacks).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from capstan.artifacts.paths import path_from_uri
from capstan.cli import context
from capstan.cli.main import main
from capstan.errors import ResourceDoesNotExist
from capstan.services import Services
from capstan.settings import Settings
from capstan.store.engine import script_heads
from helpers.server import capstan_command, clean_env


class Cli:
    """Runs ``capstan`` in-process against one CAPSTAN_HOME."""

    def __init__(self, home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        self.home = home
        self._monkeypatch = monkeypatch
        self._capsys = capsys
        for name in ("CAPSTAN_URL", "CAPSTAN_TOKEN", "CAPSTAN_DB_URL", "CAPSTAN_ARTIFACTS"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("CAPSTAN_HOME", str(home))

    def __call__(self, *args: str, code: int = 0) -> tuple[str, str]:
        self._reset()
        self._capsys.readouterr()
        try:
            main(list(args))
            status = 0
        except SystemExit as exc:
            status = int(exc.code or 0)
        out, err = self._capsys.readouterr()
        assert status == code, f"capstan {' '.join(args)} exited {status}:\n{out}\n{err}"
        return out, err

    def _reset(self) -> None:
        context.reset()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Iterator[Cli]:
    runner = Cli(tmp_path / "home", monkeypatch, capsys)
    yield runner
    runner._reset()


@pytest.fixture
def services(cli: Cli) -> Iterator[Services]:
    svc = Services.open(Settings.for_home(cli.home))
    yield svc
    svc.close()


def _columns(table: str) -> list[list[str]]:
    return [line.split("  ") for line in table.strip().splitlines()]


def test_users_commands(cli: Cli) -> None:
    assert cli("users", "create", "alice", "--admin")[0] == "created user alice (server admin)\n"
    cli("users", "create", "bob")
    _, err = cli("users", "create", "alice", code=1)
    assert err == "error: user 'alice' already exists\n"
    _, err = cli("users", "create", "no good", code=1)
    assert err.startswith("error: name: 'no good' is not a valid user name")
    assert "bob is now editor in project p1" in cli("users", "grant", "bob", "--project", "p1", "--role", "editor")[0]
    cli("users", "grant", "bob", "--project", "p2", "--role", "viewer")
    _, err = cli("users", "grant", "bob", "--project", "p1", "--role", "owner", code=2)
    assert "Invalid value for '--role'" in err
    _, err = cli("users", "grant", "nobody", "--project", "p1", "--role", "viewer", code=1)
    assert err == "error: user 'nobody' does not exist\n"

    table, _ = cli("users", "list")
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "ADMIN", "DISABLED", "CREATED", "ROLES"]
    assert lines[2].startswith("bob  ") and lines[2].endswith("p1:editor, p2:viewer")
    assert lines[1].index("yes") == lines[0].index("ADMIN")  # aligned columns
    listed = json.loads(cli("users", "list", "--json")[0])
    assert [(u["name"], u["is_admin"], u["roles"]) for u in listed] == [
        ("alice", True, {}), ("bob", False, {"p1": "editor", "p2": "viewer"})]

    cli("users", "revoke", "bob", "--project", "p2")
    cli("users", "set-admin", "bob")
    cli("users", "disable", "bob")
    bob = json.loads(cli("users", "list", "--json")[0])[1]
    assert (bob["is_admin"], bob["disabled"], bob["roles"]) == (True, True, {"p1": "editor"})
    cli("users", "enable", "bob")
    cli("users", "set-admin", "bob", "--off")
    bob = json.loads(cli("users", "list", "--json")[0])[1]
    assert (bob["is_admin"], bob["disabled"]) == (False, False)


def test_tokens_commands(cli: Cli, services: Services) -> None:
    cli("users", "create", "alice")
    out, err = cli("tokens", "create", "--user", "alice", "--name", "laptop", "--expires", "30d")
    secret = out.strip()
    assert secret.startswith("cap_") and out.count("\n") == 1  # only the secret on stdout
    assert "not shown again" in err and "MLFLOW_TRACKING_TOKEN" in err
    credential = services.auth.credential(secret)
    assert credential is not None and credential.user == "alice"
    issued = json.loads(cli("tokens", "create", "--user", "alice", "--json")[0])
    assert issued["secret"].startswith("cap_") and issued["token"]["expires_at"] is None

    _, err = cli("tokens", "create", "--user", "alice", "--expires", "3x", code=1)
    assert err == "error: --expires: '3x' is not a duration such as 30d, 12h, 15m or 1h30m\n"
    _, err = cli("tokens", "create", "--user", "zoe", code=1)
    assert err == "error: user 'zoe' does not exist\n"

    table, _ = cli("tokens", "list")
    rows = _columns(table)
    assert table.splitlines()[0].split() == ["ID", "PREFIX", "USER", "NAME", "CREATED", "EXPIRES", "LAST", "USED",
                                             "STATE"]
    assert secret not in table and f"{secret[:12]}..." in table
    assert len(rows) == 3 and "laptop" in table
    tokens = json.loads(cli("tokens", "list", "--user", "alice", "--json")[0])
    assert [t["state"] for t in tokens] == ["active", "active"] and "secret" not in tokens[0]

    assert "revoked token 1" in cli("tokens", "revoke", secret[:12])[0]
    assert "revoked token 2" in cli("tokens", "revoke", "2")[0]
    assert [t["state"] for t in json.loads(cli("tokens", "list", "--json")[0])] == ["revoked", "revoked"]
    _, err = cli("tokens", "revoke", "77", code=1)
    assert err == "error: token '77' does not exist\n"


def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    env = clean_env(tmp_path / "home")
    result = subprocess.run([*capstan_command(), "tokens", "revoke", "nope"], env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr == "error: token: 'nope' is neither a token id nor a token prefix such as cap_1a2B3c4D\n"
    result = subprocess.run([*capstan_command(), "server", "--port", "99999"], env=env, text=True,
                            capture_output=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--port" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*capstan_command(), "server", "--port", str(port)], env=env, text=True,
                                capture_output=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}: ") and result.stderr.count("\n") == 1


def test_audit_command(cli: Cli, services: Services) -> None:
    from capstan.auth.records import AuditEntry

    now = services.clock()
    services.auth.record_audit([
        AuditEntry(now - 3 * 86_400_000, "old", "POST /api/v1/users", "user/x", "", 200),
        AuditEntry(now - 1000, "alice", "POST /api/2.0/mlflow/runs/create", "experiment/1", "p1", 200),
        AuditEntry(now - 500, "bob", "DELETE /api/v1/tokens/{ref}", "token/2", "", 403),
    ])
    table, _ = cli("audit")
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "USER", "ACTION", "TARGET", "PROJECT", "STATUS"]
    assert [line.split()[2] for line in lines[1:]] == ["old", "alice", "bob"]
    assert lines[2].index("POST /api/2.0") == lines[0].index("ACTION")
    recent = json.loads(cli("audit", "--since", "1d", "--json")[0])
    assert [e["user"] for e in recent] == ["alice", "bob"]
    assert [e["user"] for e in json.loads(cli("audit", "--user", "bob", "--json")[0])] == ["bob"]
    assert [e["user"] for e in json.loads(cli("audit", "--project", "p1", "--json")[0])] == ["alice"]
    assert [e["user"] for e in json.loads(cli("audit", "--limit", "1", "--json")[0])] == ["bob"]
    _, err = cli("audit", "--since", "yesterday", code=1)
    assert err.startswith("error: --since: 'yesterday' is not a duration")


def test_events_command(cli: Cli, services: Services) -> None:
    services.events.append("run", "r1", "RunCreated", "run r1 created", project="p1")
    services.events.append("run", "r2", "RunCreated", "other run")
    services.events.append("run", "r1", "RunFailed", "exit code 3", type="Warning", project="p1")
    table, _ = cli("events", "run/r1")
    lines = table.splitlines()
    assert lines[0].split() == ["TIME", "TYPE", "REASON", "MESSAGE"]
    assert [line.split("  ")[-1].strip() for line in lines[1:]] == ["run r1 created", "exit code 3"]
    assert lines[2].index("RunFailed") == lines[0].index("REASON")
    assert "Warning" in lines[2]
    events = json.loads(cli("events", "run/r1", "--json")[0])
    assert [(e["reason"], e["type"], e["project"]) for e in events] == [("RunCreated", "Normal", "p1"),
                                                                       ("RunFailed", "Warning", "p1")]
    by_kind, _ = cli("events", "run")
    assert by_kind.splitlines()[0].split() == ["TIME", "OBJECT", "TYPE", "REASON", "MESSAGE"]
    assert "run/r2" in by_kind
    out, err = cli("events", "pipeline-run/none")
    assert out == "" and err == "no events for pipeline-run/none\n"
    _, err = cli("events", "/r1", code=2)
    assert "KIND[/ID] must name a kind" in err


def test_events_follow(tmp_path: Path) -> None:
    home = tmp_path / "home"
    services = Services.open(Settings.for_home(home))
    services.events.append("run", "r1", "RunCreated", "created")
    process = subprocess.Popen([*capstan_command(), "events", "run/r1", "--follow", "--interval", "0.1"],
                               env=clean_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        lines.extend(iter(process.stdout.readline, ""))

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not any("RunCreated" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            time.sleep(0.05)
        services.events.append("run", "r1", "RunFinished", "done")
        services.events.append("run", "r9", "RunFinished", "someone else")
        while not any("RunFinished" in line for line in lines):
            assert time.monotonic() < deadline and process.poll() is None, "".join(lines)
            time.sleep(0.05)
    finally:
        process.terminate()
        process.wait(timeout=10)
        services.close()
    assert lines[0].split() == ["TIME", "TYPE", "REASON", "MESSAGE"]
    assert not any("someone else" in line for line in lines)
    assert lines[2].index("RunFinished") == lines[0].index("REASON")


def test_gc_keeps_what_model_versions_use(cli: Cli, services: Services) -> None:
    tracking, artifacts = services.tracking, services.artifacts
    experiment = tracking.create_experiment("gc", project="default")
    kept_run = tracking.create_run(experiment)
    other_run = tracking.create_run(experiment)
    live_run = tracking.create_run(experiment)
    kept, other, live = (path_from_uri(r.artifact_uri) for r in (kept_run, other_run, live_run))
    artifacts.put_bytes(f"{kept}/model/model.pkl", b"model bytes")
    artifacts.put_bytes(f"{kept}/notes.txt", b"notes")
    artifacts.put_bytes(f"{other}/data.bin", b"x" * 100)
    artifacts.put_bytes(f"{other}/copy.pkl", b"model bytes")  # same content as the kept model: one blob
    artifacts.put_bytes(f"{live}/alive.txt", b"alive")
    services.registry.create_registered_model("gc-model", project="default")
    services.registry.create_model_version("gc-model", source=f"{kept_run.artifact_uri}/model",
                                           run_id=kept_run.run_id)
    tracking.delete_run(kept_run.run_id)
    tracking.delete_run(other_run.run_id)

    out, _ = cli("gc", "--dry-run")
    assert "would remove 0 experiment(s) and 2 run(s)" in out
    assert f"kept artifacts under 1 prefix(es) still used by model versions: {kept}/model" in out
    assert "would remove 3 artifact file(s) under 2 prefix(es)" in out
    assert "would free 2 stored blob(s), 105 B" in out
    assert tracking.get_run(other_run.run_id).info.lifecycle_stage == "deleted"  # nothing changed
    assert artifacts.exists(f"{other}/data.bin") and artifacts.exists(f"{kept}/notes.txt")

    out, _ = cli("gc", "--older-than", "30d")
    assert "removed 0 experiment(s) and 0 run(s)" in out and "freed 0 stored blob(s)" in out
    assert artifacts.exists(f"{other}/data.bin")

    out, _ = cli("gc")
    assert "removed 0 experiment(s) and 2 run(s)" in out
    assert "removed 3 artifact file(s) under 2 prefix(es)" in out
    assert "freed 2 stored blob(s), 105 B" in out
    with pytest.raises(ResourceDoesNotExist):
        tracking.get_run(other_run.run_id)
    assert artifacts.read_bytes(f"{kept}/model/model.pkl") == b"model bytes"
    assert not artifacts.exists(f"{kept}/notes.txt") and not artifacts.exists(f"{other}/copy.pkl")
    assert artifacts.read_bytes(f"{live}/alive.txt") == b"alive"

    _, err = cli("gc", "--older-than", "forever", code=1)
    assert err.startswith("error: --older-than: 'forever' is not a duration")


def test_db_upgrade(cli: Cli) -> None:
    out, _ = cli("db", "upgrade")
    lines = out.splitlines()
    assert lines[0] == f"metadata store: sqlite:///{cli.home.resolve() / 'capstan.db'}"
    heads = ", ".join(sorted(script_heads()))
    assert lines[1] == f"applied migrations: {heads}"
    assert lines[2] == f"current revisions: {heads} (heads: {heads})"
    out, _ = cli("db", "upgrade")
    assert out.splitlines()[1] == "already up to date"


@pytest.mark.parametrize("command", [["server"], ["users"], ["users", "create"], ["users", "list"],
                                     ["users", "grant"], ["users", "revoke"], ["users", "set-admin"],
                                     ["users", "disable"], ["users", "enable"], ["tokens"], ["tokens", "create"],
                                     ["tokens", "list"], ["tokens", "revoke"], ["audit"], ["events"], ["gc"],
                                     ["db"], ["db", "upgrade"]])
def test_every_command_has_help(cli: Cli, command: list[str]) -> None:
    out, _ = cli(*command, "--help")
    assert out.startswith("Usage: capstan " + " ".join(command))
