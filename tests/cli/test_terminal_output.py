"""The long-running commands in a real terminal (a pty, TERM=xterm-256color, 80x24) print a bounded amount.

Piped output never shows a live display's misbehaviour: Rich only animates when it writes to a terminal. These
tests run the CLI on the slave side of a pseudo-terminal and read everything it writes. A progress bar that
redraws itself through the pipelines' output router once printed 65,000 lines for one ``capstan quickstart``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from helpers.server import capstan_command, clean_env

ROOT = Path(__file__).parents[2]
MAX_BYTES = 64 * 1024
MAX_LINES = 200
SAFETY_TIMEOUT_S = 300  # only a guard against a hung child; nothing here asserts on time

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs a POSIX pseudo-terminal")

PIPELINE = '''
import sys

import capstan.pipelines as cp


@cp.step(isolation="thread")
def extract(rows: int) -> list[int]:
    for i in range(50):  # step output goes to the step's log, never onto the terminal
        print(f"extract: row batch {i}")
        print(f"extract: warning {i}", file=sys.stderr)
    return list(range(rows))


@cp.step
def double(values: list[int]) -> list[int]:
    for i in range(50):
        print(f"double: line {i}")
    return [2 * v for v in values]


@cp.step(isolation="thread")
def total(values: list[int]) -> int:
    return sum(values)


@cp.pipeline
def tiny(rows: int = 10) -> int:
    return total(double(extract(rows)))
'''


def run_in_pty(args: list[str], home: Path, cwd: Path = ROOT) -> tuple[int, bytes]:
    """Run ``capstan ARGS`` with a pty as its stdin, stdout and stderr; return its exit status and every byte."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = clean_env(home, {"TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"})
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "CI"):
        env.pop(name, None)
    process = subprocess.Popen([*capstan_command(), *args], stdin=slave, stdout=slave, stderr=slave, env=env,
                               cwd=cwd, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + SAFETY_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    # Nothing left to read once the child is gone and the buffer is empty.
                    ready, _, _ = select.select([master], [], [], 0.2)
                    if not ready:
                        break
                continue
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: every writer closed the slave side
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            out += data
        else:
            process.kill()
            pytest.fail(f"capstan {' '.join(args)} still running after {SAFETY_TIMEOUT_S}s; output so far:\n"
                        f"{bytes(out[-4000:]).decode(errors='replace')}")
    finally:
        os.close(master)
    return process.wait(timeout=60), bytes(out)


def assert_bounded(args: list[str], rc: int, out: bytes) -> str:
    text = out.decode("utf-8", errors="replace")
    assert rc == 0, f"capstan {' '.join(args)} exited {rc}:\n{text[-4000:]}"
    assert "Traceback" not in text, text[-4000:]
    lines = out.count(b"\n")
    assert len(out) < MAX_BYTES and lines < MAX_LINES, (
        f"capstan {' '.join(args)} wrote {len(out)} bytes in {lines} lines to an 80x24 terminal; the last of "
        f"it:\n{text[-2000:]}")
    return text


def test_quickstart_in_a_terminal(tmp_path: Path) -> None:
    args = ["quickstart"]
    text = assert_bounded(args, *run_in_pty(args, tmp_path / "home"))
    assert "Searched 8 trials" in text and "models:/quickstart@champion" in text


def test_run_and_backfill_in_a_terminal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    pipeline = tmp_path / "tiny.py"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    args = ["run", str(pipeline)]
    text = assert_bounded(args, *run_in_pty(args, home))
    assert "succeeded" in text
    assert "row batch" not in text and "double: line" not in text  # step output stays in the step logs

    rc, out = run_in_pty(["schedules", "create", "nightly", "--pipeline", f"{pipeline}:tiny", "--cron",
                          "0 3 * * *"], home)
    assert rc == 0, out.decode(errors="replace")
    args = ["schedules", "backfill", "nightly", "--from", "2024-01-01", "--to", "2024-01-02T05:00"]
    text = assert_bounded(args, *run_in_pty(args, home))
    assert text.count("succeeded") == 2, text[-2000:]


def test_simulate_in_a_terminal(tmp_path: Path) -> None:
    trace = tmp_path / "trace.csv"
    rows = ["job_id,submit_time_s,duration_s,num_gpus,cluster"]
    rows += [f"j{i},{i * 30},{600 + (i * 37) % 3000},{1 + i % 4},cluster0{1 + i % 3}" for i in range(600)]
    trace.write_text("\n".join(rows) + "\n")
    args = ["simulate", "--trace", str(trace), "--cluster", str(ROOT / "examples" / "queues" / "itp-cluster.yaml"),
            "--policy", "strict-fifo", "--policy", "capstan-las"]
    text = assert_bounded(args, *run_in_pty(args, tmp_path / "home"))
    assert "strict-fifo" in text and "capstan-las" in text
