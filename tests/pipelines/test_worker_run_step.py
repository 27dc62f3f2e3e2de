"""``capstan worker run-step``: the command a pipeline step's pod runs, run here as a real subprocess against a real
``capstan server`` (loopback port) sharing its stores, as pods share the server's database and artifact store.

The pipeline's code reaches the worker only through the content-addressed package in the artifact store: the
source folder is deleted after the upload, and the worker runs in an empty working directory.
"""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.k8s.pipeline_jobs import step_jobs
from capstan.k8s.render_pipelines import render_pipeline_jobs
from capstan.pipelines.code_package import (
    build_package,
    fetch_package,
    package_path,
    ship_pipeline,
    upload_package,
)
from capstan.pipelines.loader import load_pipeline
from capstan.pipelines.remote_step import read_outcome
from capstan.pipelines.serialize import load_output
from capstan.services import Services
from capstan.settings import Settings
from helpers.pipelines import SQUARE_STEPS
from helpers.server import ServerProcess, capstan_command, start_server

ETL = Path(__file__).parents[2] / "examples" / "pipelines" / "etl.py"

PIPELINE = SQUARE_STEPS + '''
@cp.step
def broken(xs: list[int]) -> int:
    raise RuntimeError("no luck")

@cp.step
def liar(xs: list[int]) -> int:
    return "not an int"

@cp.pipeline
def squares(n: int = 10, shards: int = 3):
    xs = make(n)
    parts = square.map(cp.chunks(shards), xs=xs)
    broken(xs)
    liar(xs)
    return total(parts)
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with start_server(tmp_path_factory.mktemp("worker-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def services(server: ServerProcess) -> Iterator[Services]:
    opened = Services.open(Settings.for_home(server.home), migrate=False)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def code_ref(services: Services, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The pipeline uploaded as a package; its source folder is gone afterwards."""
    source = tmp_path_factory.mktemp("pipeline-src")
    (source / "squares.py").write_text(textwrap.dedent(PIPELINE))
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "junk.pyc").write_bytes(b"x")
    package = upload_package(services.artifacts, source)
    assert package.files == 1
    shutil.rmtree(source)
    return package.ref


def worker(server: ServerProcess, cwd: Path, *args: str, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*capstan_command(), "worker", "run-step", *args], cwd=cwd, text=True,
                          capture_output=True, env={**server.env, **(env or {})}, timeout=120)


def step(server: ServerProcess, cwd: Path, code: str, run: str, node: str, *extra: str,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return worker(server, cwd, "--pipeline", "squares.py:squares", "--node", node, "--run", run, "--code", code,
                  "--param", "n=10", *extra, env=env)


def test_a_pipeline_runs_step_by_step_from_the_code_package(server: ServerProcess, services: Services,
                                                            code_ref: str, tmp_path: Path) -> None:
    run = "run-fanout"
    made = step(server, tmp_path, code_ref, run, "make")
    assert made.returncode == 0, made.stderr
    assert "making 10" in made.stdout  # the step's output reaches the container log as it is written
    for index in range(3):
        part = step(server, tmp_path, code_ref, run, "square", env={"CHUNK_INDEX": str(index), "CHUNK_COUNT": "3"})
        assert part.returncode == 0, part.stderr
        assert f"chunk {index} of 3" in part.stdout
    done = step(server, tmp_path, code_ref, run, "total")
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing was written to the working directory

    store = services.artifacts
    outcome = read_outcome(store, run, "total", 1)
    assert outcome is not None and outcome.ok and outcome.output is not None
    assert load_output(outcome.output, project="default", store=lambda: store) == sum(i * i for i in range(10))
    chunk = read_outcome(store, run, "square[1]", 1)
    assert chunk is not None and chunk.ok and chunk.log_path is not None
    assert store.read_bytes(chunk.log_path) == b"chunk 1 of 3\n"

    # The server sees what the pods recorded.
    answer = httpx.get(f"{server.url}/api/v1/events", params={"kind": "step", "object_id": f"{run}/square[2]"})
    assert answer.status_code == 200
    assert [e["reason"] for e in answer.json()["events"]] == ["StepPodStarted", "StepPodSucceeded"]

    again = step(server, tmp_path, code_ref, run, "make")  # a retried pod is the next attempt
    assert again.returncode == 0, again.stderr
    assert read_outcome(store, run, "make", 2) is not None
    chosen = step(server, tmp_path, code_ref, run, "make", "--attempt", "7")
    assert chosen.returncode == 0, chosen.stderr
    assert read_outcome(store, run, "make", 7) is not None


def test_failures_exit_with_the_steps_status(server: ServerProcess, services: Services, code_ref: str,
                                             tmp_path: Path) -> None:
    run = "run-failures"
    assert step(server, tmp_path, code_ref, run, "make").returncode == 0
    broken = step(server, tmp_path, code_ref, run, "broken")
    assert broken.returncode == 1
    assert "RuntimeError: no luck" in broken.stdout  # the traceback, in the container log
    assert broken.stderr.strip().splitlines()[-1].startswith("error: step 'broken' attempt 1")
    outcome = read_outcome(services.artifacts, run, "broken", 1)
    assert outcome is not None and not outcome.ok and outcome.reason == "Exception"
    events = httpx.get(f"{server.url}/api/v1/events",
                       params={"kind": "step", "object_id": f"{run}/broken"}).json()["events"]
    assert events[-1]["reason"] == "StepPodFailed" and events[-1]["type"] == "Warning"
    liar = step(server, tmp_path, code_ref, run, "liar")
    assert liar.returncode == 2  # a wrong return type: retrying cannot help, the Job fails at once


@pytest.mark.parametrize(("node", "env", "code", "message"), [
    ("nope", {}, None, "error: --node: pipeline 'squares' has no step 'nope' (its steps: make, square, broken, "
                      "liar, total)"),
    ("square", {}, None, "error: step 'square' is a map: its pods need CHUNK_INDEX (the indexed Job sets it)"),
    ("square", {"CHUNK_INDEX": "3"}, None, "error: CHUNK_INDEX 3 is outside step 'square''s 3 item(s)"),
    ("square", {"CHUNK_INDEX": "0", "CHUNK_COUNT": "4"}, None,
     "error: CHUNK_COUNT is 4 but step 'square' maps over 3 item(s)"),
    ("square", {"CHUNK_INDEX": "x"}, None, "error: CHUNK_INDEX: 'x' is not a non-negative integer"),
    ("total", {}, "sha256:" + "0" * 64, f"error: code package sha256:{'0' * 64} is not in the artifact store "
                                      f"({package_path('0' * 64)})"),
    ("total", {}, "abc", "error: --code: 'abc' is not a code package reference (sha256:<64 hex digits>)"),
])
def test_bad_input_is_one_line_and_exit_status_2(server: ServerProcess, services: Services, code_ref: str,
                                                 tmp_path: Path, node: str, env: dict[str, str], code: str | None,
                                                 message: str) -> None:
    run = "run-bad-input"
    assert step(server, tmp_path, code_ref, run, "make").returncode == 0
    result = step(server, tmp_path, code or code_ref, run, node, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_missing_upstream_result_and_run_id(server: ServerProcess, code_ref: str, tmp_path: Path) -> None:
    result = step(server, tmp_path, code_ref, "run-empty", "total")  # its input is the map's first child
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: step 'square[0]' has no result in run run-empty yet; its Job must succeed "
                                     "before this one starts")
    no_run = worker(server, tmp_path, "--pipeline", "squares.py", "--node", "make", "--code", code_ref)
    assert no_run.returncode == 2
    assert no_run.stderr.strip() == "error: no run id: pass --run RUN_ID (or set CAPSTAN_RUN_ID and CAPSTAN_STEP)"


def test_outputs_the_orchestrator_recorded_come_first(server: ServerProcess, services: Services, code_ref: str,
                                                      tmp_path: Path) -> None:
    """Under the Kubernetes executor a step may be taken from the cache: no pod ran it, so it has no result.json,
    and its successors read the output from the run's step row."""
    from sqlalchemy import update

    from capstan.pipelines.serialize import encode_output
    from capstan.pipelines.tables import pipeline_steps

    source = tmp_path / "src"
    source.mkdir()
    (source / "squares.py").write_text(textwrap.dedent(PIPELINE))
    pipe, canonical = load_pipeline(str(source / "squares.py"))
    record, _graph = services.pipelines.get().create_run(pipe, {"n": 4}, ref=canonical, source="cli")
    fmt, inline, path, digest, size = encode_output([5, 6, 7, 8], prefix="unused", project="default",
                                                    store=lambda: services.artifacts, label="test").columns()
    with services.engine.begin() as conn:
        conn.execute(update(pipeline_steps).where(pipeline_steps.c.run_id == record.id,
                                                  pipeline_steps.c.step_id == "make")
                     .values(state="cached", output_format=fmt, output_inline=inline, output_path=path,
                             output_digest=digest, output_size=size))
    work = tmp_path / "work"
    work.mkdir()
    result = worker(server, work, "--pipeline", "squares.py:squares", "--node", "square", "--run", record.id,
                    "--code", code_ref, "--param", "n=4", "--param", "shards=1", env={"CHUNK_INDEX": "0"})
    assert result.returncode == 0, result.stderr
    outcome = read_outcome(services.artifacts, record.id, "square[0]", 1)
    assert outcome is not None and outcome.output is not None
    assert load_output(outcome.output, project="default", store=lambda: services.artifacts) == [25, 36, 49, 64]


def test_packages_are_deterministic_and_checked(services: Services, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "a.py").write_text("A = 1\n")
    (source / "main.py").write_text("import pkg.a\n")
    (source / ".git").mkdir()
    (source / ".git" / "HEAD").write_text("ref\n")
    first, count = build_package(source)
    assert count == 2
    (source / "main.py").touch()  # a newer modification time is the same code
    assert build_package(source)[0] == first
    (source / "main.py").write_text("import pkg.a  # changed\n")
    assert build_package(source)[0] != first

    package = upload_package(services.artifacts, source)
    out = fetch_package(services.artifacts, package.ref, tmp_path / "out")
    assert (out / "pkg" / "a.py").read_text() == "A = 1\n" and not (out / ".git").exists()
    services.artifacts.put_bytes(package.path, b"tampered")
    with pytest.raises(InvalidParameterValue, match="do not match the digest"):
        fetch_package(services.artifacts, package.ref, tmp_path / "again")
    with pytest.raises(ResourceDoesNotExist):
        fetch_package(services.artifacts, "sha256:" + "1" * 64, tmp_path / "none")


def test_the_rendered_jobs_of_the_etl_example_run_in_dag_order(server: ServerProcess, services: Services,
                                                               tmp_path: Path) -> None:
    """Each rendered Job's own command line (and CHUNK_COUNT; CHUNK_INDEX per completion index), with the run and
    the shipped code package added, run as its pods would run it."""
    params = {"rows": "200", "shards": "2"}
    pipe, canonical = load_pipeline(str(ETL))
    code, ref = ship_pipeline(services.artifacts, canonical)
    assert ref == "etl.py:etl"
    jobs = render_pipeline_jobs(step_jobs(pipe.build(params), ref, params=params))
    run = "run-etl"
    for job in jobs:
        container = job["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        indexes = range(job["spec"]["completions"]) if "completionMode" in job["spec"] else [None]
        for index in indexes:
            pod_env = {**env, **({"CHUNK_INDEX": str(index)} if index is not None else {})}
            command = container["command"]
            assert command[:3] == ["capstan", "worker", "run-step"]
            result = worker(server, tmp_path, *command[3:], "--run", run, "--code", code, env=pod_env)
            assert result.returncode == 0, (job["metadata"]["name"], result.stderr)
    store = services.artifacts
    split = read_outcome(store, run, "split", 1)
    impute = read_outcome(store, run, "impute", 1)
    assert split is not None and split.output is not None and impute is not None and impute.output is not None
    sizes = load_output(split.output, project="default", store=lambda: store)
    rows = load_output(impute.output, project="default", store=lambda: store)
    assert sizes["train"] + sizes["test"] == len(rows) > 0
    profiled = read_outcome(store, run, "profile_shard[1]", 1)  # a command step, from the package's own file
    assert profiled is not None and profiled.ok
