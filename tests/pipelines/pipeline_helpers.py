"""Shared helpers of the pipelines tests: writing pipeline files, running the CLI, opening a runner."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from capstan.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
# The CLI as a user's terminal starts it: Ctrl-C raises KeyboardInterrupt. A test suite started in the background
# by a shell without job control (`.ci/run &`, nohup) inherits SIGINT ignored, and Python keeps ignoring it.
MAIN = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from capstan.cli.main import main; main()")


def write_pipeline(folder: Path, name: str, source: str) -> Path:
    """Write a pipeline module ``name.py`` (dedented) into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def cli_env(settings: Settings) -> dict[str, str]:
    """Environment for a ``capstan`` subprocess using ``settings``' home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env["CAPSTAN_HOME"] = str(settings.home)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def capstan(settings: Settings, *args: str, cwd: Path | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``capstan ARGS`` in a subprocess and return what it printed."""
    proc = subprocess.run([sys.executable, "-c", MAIN, *args], env=cli_env(settings), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"capstan {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def popen_capstan(settings: Settings, *args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    """Start ``capstan ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-c", MAIN, *args], env=cli_env(settings), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
