"""Helpers of the integration tests: pipeline files, the ``capstan`` CLI in a subprocess, reading marks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from capstan.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
MAIN = "from capstan.cli.main import main; main()"

MARKS = '''
import json, os, time
from pathlib import Path


def mark(marks: str, what: str, **extra) -> None:
    """Append one JSON line to MARKS/events: what happened, when, and the queue's environment."""
    record = {"what": what, "t": time.time(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "workload": os.environ.get("CAPSTAN_WORKLOAD_ID"),
              "restart": os.environ.get("CAPSTAN_RESTART_COUNT"), "attempt": os.environ.get("CAPSTAN_ATTEMPT"),
              **extra}
    Path(marks).mkdir(parents=True, exist_ok=True)
    with open(Path(marks, "events"), "a") as fh:
        fh.write(json.dumps(record) + "\\n")
'''


def write_pipeline(folder: Path, name: str, source: str) -> Path:
    """Write ``name.py`` (the marks helper, then ``source`` dedented) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(MARKS) + textwrap.dedent(source))
    return path


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment of a ``capstan`` subprocess on ``settings``' home, plus ``extra`` ``CAPSTAN_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["CAPSTAN_HOME"] = str(settings.home)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def capstan(settings: Settings, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``capstan ARGS`` to completion."""
    return subprocess.run([sys.executable, "-c", MAIN, *args], env=env or cli_env(settings), capture_output=True,
                          text=True, timeout=timeout)


def popen_capstan(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``capstan ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-c", MAIN, *args], env=env or cli_env(settings),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def marks(folder: Path) -> list[dict[str, Any]]:
    """The JSON lines the steps wrote, in order."""
    path = folder / "events"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0, poll: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
