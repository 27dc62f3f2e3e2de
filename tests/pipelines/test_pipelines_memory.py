"""A step's ``memory`` request is enforced on its worker process (RLIMIT_DATA), for Python and command steps; in
thread isolation it is a scheduling request only and `capstan run` says so. Also: CLI errors for a directory as
the pipeline file and for `capstan logs` on a mapped step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pipeline_helpers import capstan, write_pipeline

from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.runner import PipelineRunner, RunResult
from capstan.settings import Settings

MEMORY = f'''
import os
import sys

import capstan.pipelines as cp


def grab() -> int:
    block = bytearray(400 * 2**20)  # 400 MiB: counted by RLIMIT_DATA even before its pages are touched
    block[::4096] = b"x" * len(block[::4096])
    return len(block)


@cp.step(resources={{"memory": "100Mi"}})
def small() -> int:
    return grab()


@cp.step(resources={{"memory": "1Gi"}})
def big() -> int:
    return grab()


@cp.step
def unlimited() -> int:
    return grab()


@cp.step(resources={{"memory": "100Mi"}})
def after() -> str:
    return os.environ.get("CAPSTAN_MEMORY_REQUEST", "")


command = cp.command_step([{sys.executable!r}, "-c", "bytearray(400 * 2**20)"], name="command",
                          resources={{"memory": "100Mi"}})


@cp.pipeline
def limited():
    small()
    command()
    return big(), unlimited(), after()


@cp.step(isolation="thread", resources={{"memory": "64Mi"}})
def light() -> int:
    return 1


@cp.pipeline
def threaded():
    return light()
'''

MAPPED = '''
import capstan.pipelines as cp


@cp.step
def square(x: int) -> int:
    print("squaring", x)
    return x * x


@cp.pipeline
def squares():
    return square.map([1, 2, 3, 4])
'''


@pytest.fixture
def memory_flow(tmp_path: Path) -> Path:
    return write_pipeline(tmp_path / "code", "memflow", MEMORY)


def run(runner: PipelineRunner, flow: Path, func: str) -> RunResult:
    pipe, ref = load_pipeline(f"{flow}:{func}")
    return runner.run(pipe, {}, ref=ref)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA is enforced on Linux")
def test_process_steps_are_held_to_their_memory_request(runner: PipelineRunner, memory_flow: Path) -> None:
    result = run(runner, memory_flow, "limited")
    states = {s.step_id: (s.state, s.reason) for s in result.steps}
    assert states["small"] == ("failed", "OOMKilled")
    assert states["command"] == ("failed", "OOMKilled")
    assert states["big"] == ("succeeded", "")
    assert states["unlimited"] == ("succeeded", "")
    assert states["after"] == ("succeeded", "")
    attempts = runner.store.attempts(result.run_id, "small")
    assert attempts[0].message.startswith("MemoryError: step 'small' (")
    assert attempts[0].message.endswith("exceeded its memory request of 100Mi")
    (command,) = runner.store.attempts(result.run_id, "command")
    assert "exceeded its memory request of 100Mi" in command.message
    assert result.step("small").message.endswith("exceeded its memory request of 100Mi")


def test_thread_steps_with_memory_requests_get_a_warning(settings: Settings, memory_flow: Path) -> None:
    r = capstan(settings, "run", f"{memory_flow}:threaded", "--json")
    assert r.returncode == 0, r.stderr
    assert ("warning: step 'light' (isolation='thread'): its memory request 64Mi is used for queue admission "
            "only and is not enforced") in r.stderr


def test_run_on_a_directory_says_so(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    write_pipeline(folder, "train", MAPPED)
    r = capstan(settings, "run", str(folder))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == (f"error: {str(folder)!r} is a directory, not a pipeline file; name the file, "
                                f"e.g. {folder}/train.py (Python files here: train.py)")


def test_logs_of_a_mapped_step_lists_its_instances(settings: Settings, tmp_path: Path) -> None:
    flow = write_pipeline(tmp_path / "code", "mapped", MAPPED)
    r = capstan(settings, "run", f"{flow}:squares", "--json", check=True)
    import json

    run_id = json.loads(r.stdout)["run"]["id"]
    r = capstan(settings, "logs", run_id, "square")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "is mapped: its output is in its instances square[0..3]" in r.stderr
    assert f"capstan logs {run_id} 'square[0]'" in r.stderr
    r = capstan(settings, "logs", run_id, "square[2]", check=True)
    assert r.stdout == "squaring 3\n"
