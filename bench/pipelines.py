"""Benchmark: orchestration overhead of no-op DAGs in Capstan pipelines and in peer orchestrators.

DAGs: "wide" (one root, 200 parallel steps, one join: 202 steps) and "chain" (50 steps in sequence).

Systems:
- Capstan thread mode and process mode (durable SQLite state, cache keys looked up and written, events), each
  "warm" (median of repeated runs in one process: the worker pool is already running) and "cold" (the first run of
  a fresh process and store, the worker pool's start-up included);
- a plain ``concurrent.futures`` floor (thread pool; and a process pool for process mode);
- Prefect 3 (ephemeral server), Dagster (``execute_in_process``) and Airflow (``airflow dags test``), each run
  with its own interpreter when installed (they are never Capstan dependencies). Point at them with
  ``CAPSTAN_BENCH_PREFECT_PYTHON``, ``CAPSTAN_BENCH_DAGSTER_PYTHON``, ``CAPSTAN_BENCH_AIRFLOW_PYTHON`` (defaults:
  ``/tmp/bench-venv/bin/python``, ``/tmp/dagster-venv/bin/python``, ``/tmp/airflow-venv/bin/python``); a peer
  that is missing or fails is skipped with the reason printed.

Overhead per step = (system time - thread-pool floor time) / steps. Airflow's CLI start-up (a one-task DAG) is
subtracted before dividing. Usage: ``python bench/pipelines.py [--reps 5] [--peers prefect,dagster,airflow]
[--modes thread,process] [--shapes wide,chain] [--json results.json]``.

``--compare-src DIR`` measures Capstan from this checkout and from another source tree (say, the previous commit's
``src``) in child processes, alternating ``--rounds`` times so that both see the same load, and prints the overhead
of each with their ratio: ``python bench/pipelines.py --peers "" --modes thread --shapes chain --compare-src DIR``.
"""

from __future__ import annotations

import sys

# bench/ holds other benchmarks (bench/queue.py) that would shadow standard modules: keep it off the path.
sys.path[:] = [p for p in sys.path if p != __import__("os").path.dirname(__import__("os").path.abspath(__file__))]

import argparse  # noqa: E402  # after the path fix above
import concurrent.futures as cf  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import textwrap  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

WIDE, CHAIN = 200, 50
STEPS = {"wide": WIDE + 2, "chain": CHAIN}

CAPSTAN_DAGS = '''
import capstan.pipelines as cp


@cp.step(isolation="thread")
def t_noop(salt, i, *after):
    return None


@cp.step
def p_noop(salt, i, *after):
    return None


def _wide(step, salt, n):
    root = step(salt, -1)
    return step(salt, n, *[step(salt, i, root) for i in range(n)])


def _chain(step, salt, n):
    x = step(salt, 0)
    for i in range(1, n):
        x = step(salt, i, x)
    return x


@cp.pipeline
def wide_thread(salt: int = 0, n: int = 200):
    return _wide(t_noop, salt, n)


@cp.pipeline
def chain_thread(salt: int = 0, n: int = 50):
    return _chain(t_noop, salt, n)


@cp.pipeline
def wide_process(salt: int = 0, n: int = 200):
    return _wide(p_noop, salt, n)


@cp.pipeline
def chain_process(salt: int = 0, n: int = 50):
    return _chain(p_noop, salt, n)
'''

PREFECT = '''
import json, os, sys, time
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
from prefect import flow, task

@task
def noop(i, *deps):
    return None

@flow
def wide(n: int = 200):
    root = noop.submit(-1)
    mids = [noop.submit(i, wait_for=[root]) for i in range(n)]
    noop.submit(n, wait_for=mids).result()

@flow
def chain(n: int = 50):
    x = noop(0)
    for i in range(1, n):
        x = noop(i, x)

reps = int(sys.argv[1])
wide(5); chain(5)
out = {"wide": [], "chain": []}
for _ in range(reps):
    t = time.perf_counter(); wide(); out["wide"].append(time.perf_counter() - t)
    t = time.perf_counter(); chain(); out["chain"].append(time.perf_counter() - t)
print("RESULT " + json.dumps(out))
'''

DAGSTER = '''
import json, sys, time
from dagster import DagsterInstance, in_process_executor, job, op

@op
def root_op():
    return 0

@op
def mid(x):
    return x

@op
def join(xs: list):
    return len(xs)

@job(executor_def=in_process_executor)
def wide():
    r = root_op()
    join([mid.alias(f"m{i}")(r) for i in range(200)])

@op
def link(x):
    return x

@job(executor_def=in_process_executor)
def chain():
    x = root_op()
    for i in range(49):
        x = link.alias(f"s{i}")(x)

reps = int(sys.argv[1])
instance = DagsterInstance.ephemeral()
wide.execute_in_process(instance=instance); chain.execute_in_process(instance=instance)
out = {"wide": [], "chain": []}
for _ in range(reps):
    t = time.perf_counter(); assert wide.execute_in_process(instance=instance).success
    out["wide"].append(time.perf_counter() - t)
    t = time.perf_counter(); assert chain.execute_in_process(instance=instance).success
    out["chain"].append(time.perf_counter() - t)
print("RESULT " + json.dumps(out))
'''

AIRFLOW_DAGS = '''
import datetime as dt
from airflow.sdk import DAG, task

def build(name, shape):
    with DAG(name, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
        @task
        def noop(i):
            return None
        if shape == "wide":
            root = noop.override(task_id="root")(-1)
            mids = [noop.override(task_id=f"m{i}")(i) for i in range(200)]
            join = noop.override(task_id="join")(200)
            root >> mids
            mids >> join
        elif shape == "chain":
            prev = noop.override(task_id="s0")(0)
            for i in range(1, 50):
                cur = noop.override(task_id=f"s{i}")(i)
                prev >> cur
                prev = cur
        else:
            noop.override(task_id="only")(0)
    return dag

wide = build("bench_wide", "wide")
chain = build("bench_chain", "chain")
single = build("bench_single", "single")
'''

AIRFLOW = '''
import json, os, subprocess, sys, tempfile, time
home = tempfile.mkdtemp()
dags = os.path.join(home, "dags")
os.makedirs(dags)
env = dict(os.environ, AIRFLOW_HOME=home, AIRFLOW__CORE__LOAD_EXAMPLES="False", AIRFLOW__CORE__DAGS_FOLDER=dags,
           AIRFLOW__LOGGING__LOGGING_LEVEL="ERROR", AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/a.db")
airflow = os.path.join(os.path.dirname(sys.executable), "airflow")
with open(os.path.join(dags, "bench_dags.py"), "w") as fh:
    fh.write(sys.argv[2])
subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=env)
subprocess.run([airflow, "dags", "reserialize"], check=True, capture_output=True, env=env)

def timed(dag_id):
    t = time.perf_counter()
    proc = subprocess.run([airflow, "dags", "test", dag_id], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"airflow dags test {dag_id} failed: {proc.stderr[-500:]}")
    return time.perf_counter() - t

out = {"wide": [], "chain": [], "single": []}
for _ in range(int(sys.argv[1])):
    for shape in ("single", "wide", "chain"):
        out[shape].append(timed(f"bench_{shape}"))
print("RESULT " + json.dumps(out))
'''


# -- Capstan -------------------------------------------------------------------------------------------------------
def capstan_runs(reps: int, workdir: Path, modes: list[str] | None = None,
                 shapes: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Warm medians and cold first runs of the Capstan pipelines (both modes and shapes unless narrowed)."""
    from capstan.pipelines.executors import close_pools
    from capstan.pipelines.loader import load_pipeline
    from capstan.services import Services
    from capstan.settings import Settings

    code = workdir / "capstan_dags.py"
    code.write_text(textwrap.dedent(CAPSTAN_DAGS))
    out: dict[str, dict[str, Any]] = {}
    for mode in modes or ["thread", "process"]:
        for shape in shapes or ["wide", "chain"]:
            name = f"{shape}_{mode}"
            pipe, ref = load_pipeline(f"{code}:{name}")
            home = workdir / f"home-{name}"
            runner = Services.open(Settings.for_home(home)).pipelines.get()
            t = time.perf_counter()
            cold = runner.run(pipe, {"salt": 0}, ref=ref)
            cold_s = time.perf_counter() - t
            assert cold.ok, cold.run.message
            times, cpu = [], []
            for rep in range(1, reps + 1):
                t, c = time.perf_counter(), time.process_time()
                result = runner.run(pipe, {"salt": rep}, ref=ref)  # new salt: every cache key is new
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
                assert result.ok and not any(s.state == "cached" for s in result.steps)
            runner.close()
            close_pools()
            out[name] = {"cold": cold_s, "warm": statistics.median(times), "cpu": statistics.median(cpu),
                         "all": times}
            shutil.rmtree(home, ignore_errors=True)
    return out


# -- floors --------------------------------------------------------------------------------------------------------
def noop(*_args: Any) -> None:
    return None


def floor(pool: cf.Executor, shape: str) -> float:
    t = time.perf_counter()
    if shape == "wide":
        pool.submit(noop, -1).result()
        futures = [pool.submit(noop, i) for i in range(WIDE)]
        cf.wait(futures)
        pool.submit(noop, WIDE).result()
    else:
        for i in range(CHAIN):
            pool.submit(noop, i).result()
    return time.perf_counter() - t


def floors(reps: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with cf.ThreadPoolExecutor(32) as threads, cf.ProcessPoolExecutor(os.cpu_count() or 2) as procs:
        for shape in ("wide", "chain"):
            floor(threads, shape)
            floor(procs, shape)
            out[f"{shape}_thread"] = {"warm": statistics.median(floor(threads, shape) for _ in range(reps))}
            out[f"{shape}_process"] = {"warm": statistics.median(floor(procs, shape) for _ in range(reps))}
    return out


# -- peers ---------------------------------------------------------------------------------------------------------
def peer(name: str, default_python: str, script: str, reps: int, workdir: Path, timeout: float,
         extra: list[str] | None = None) -> dict[str, Any] | str:
    python = os.environ.get(f"CAPSTAN_BENCH_{name.upper()}_PYTHON", default_python)
    if not Path(python).exists():
        return f"no interpreter at {python} (set CAPSTAN_BENCH_{name.upper()}_PYTHON)"
    path = workdir / f"{name}_bench.py"
    path.write_text(textwrap.dedent(script))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPSTAN_", "PYTHONPATH"))}
    env.setdefault("PREFECT_HOME", str(workdir / "prefect-home"))
    env.setdefault("DAGSTER_HOME", str(workdir / "dagster-home"))
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    try:
        proc = subprocess.run([python, str(path), str(reps), *(extra or [])], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=workdir)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f}s"
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"failed ({proc.returncode}): {tail[0][:200]}"
    return dict(json.loads(line[7:]))


# -- report --------------------------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--peers", default="prefect,dagster,airflow")
    parser.add_argument("--peer-reps", type=int, default=2)
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--modes", default="thread,process", help="Capstan modes to measure (thread, process)")
    parser.add_argument("--shapes", default="wide,chain", help="DAG shapes to measure (wide, chain)")
    parser.add_argument("--compare-src", default=None, help="also measure Capstan from this source tree")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --compare-src")
    parser.add_argument("--child-json", default=None, help=argparse.SUPPRESS)  # a --compare-src child's output
    args = parser.parse_args()
    modes, shapes = args.modes.split(","), args.shapes.split(",")
    peers = [p for p in args.peers.split(",") if p]
    workdir = Path(tempfile.mkdtemp(prefix="capstan-bench-"))
    if args.child_json:
        got = {"capstan": capstan_runs(args.reps, workdir, modes, shapes), "floor": floors(args.reps * 4)}
        Path(args.child_json).write_text(json.dumps(got))
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    if args.compare_src:
        compare(args, workdir)
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    results: dict[str, Any] = {"capstan": capstan_runs(args.reps, workdir, modes, shapes),
                               "floor": floors(args.reps * 4)}
    specs = {"prefect": ("/tmp/bench-venv/bin/python", PREFECT, 1800, None),
             "dagster": ("/tmp/dagster-venv/bin/python", DAGSTER, 1800, None),
             "airflow": ("/tmp/airflow-venv/bin/python", AIRFLOW, 3600, [textwrap.dedent(AIRFLOW_DAGS)])}
    for name in peers:
        python, script, timeout, extra = specs[name]
        got = peer(name, python, script, args.peer_reps if name != "airflow" else 1, workdir, timeout, extra)
        results[name] = got
        if isinstance(got, str):
            print(f"skipped {name}: {got}", flush=True)
    print(f"machine: load average {os.getloadavg()[0]:.1f} at the end")
    rows = report(results)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"results": results, "rows": rows}, indent=2, default=str))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def compare(args: argparse.Namespace, workdir: Path) -> None:
    """Warm overhead per step of this checkout and of ``--compare-src``, in alternating child processes."""
    here = str(Path(__file__).resolve().parents[1] / "src")
    trees = {"this checkout": here, args.compare_src: args.compare_src}
    overheads: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
    for rnd in range(args.rounds):
        for name, src in trees.items():
            out = workdir / f"child-{rnd}-{len(overheads[name])}.json"
            env = {**os.environ, "CAPSTAN_BENCH_SRC": src}
            subprocess.run([sys.executable, "-P", __file__, "--reps", str(args.reps), "--modes", args.modes,
                            "--shapes", args.shapes, "--child-json", str(out)], env=env, check=True)
            got = json.loads(out.read_text())
            for key, run in got["capstan"].items():
                floor_s = got["floor"][f"{key.split('_')[0]}_thread"]["warm"]
                per_step = (run["warm"] - floor_s) / STEPS[key.split("_")[0]] * 1000
                overheads[name].setdefault(key, []).append(per_step)
                print(f"  round {rnd + 1} {name}: {key} {per_step:.3f} ms/step overhead "
                      f"(load {os.getloadavg()[0]:.2f})", flush=True)
    print(f"\n{'pipeline':16s} {'this checkout':>14s} {args.compare_src:>30s} {'ratio':>7s}  (median ms/step overhead)")
    for key in overheads["this checkout"]:
        mine = statistics.median(overheads["this checkout"][key])
        other = statistics.median(overheads[args.compare_src][key])
        print(f"{key:16s} {mine:14.3f} {other:30.3f} {mine / other:7.2f}")


def report(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for shape in ("wide", "chain"):
        if f"{shape}_thread" not in results["capstan"]:
            continue
        steps = STEPS[shape]
        base = results["floor"][f"{shape}_thread"]["warm"]
        thread = results["capstan"][f"{shape}_thread"]["warm"]
        entries: list[tuple[str, float, float | None]] = [
            ("concurrent.futures threads (floor)", base, None),
            ("concurrent.futures processes", results["floor"][f"{shape}_process"]["warm"], None),
        ]
        for mode in ("thread", "process"):
            r = results["capstan"].get(f"{shape}_{mode}")
            if r is None:
                continue
            entries.append((f"capstan {mode} (warm)", r["warm"], r["cpu"]))
            entries.append((f"capstan {mode} (cold)", r["cold"], None))
        for name, label in (("prefect", "prefect 3"), ("dagster", "dagster execute_in_process"),
                            ("airflow", "airflow dags test")):
            got = results.get(name)
            if isinstance(got, dict):
                value = statistics.median(got[shape])
                if name == "airflow":
                    value -= statistics.median(got["single"])  # the CLI's start-up and a one-task run
                entries.append((label, value, None))
        print(f"\n{shape}: {steps} no-op steps")
        print(f"{'system':38s} {'total ms':>10s} {'ms/step':>9s} {'overhead ms/step':>17s} {'vs capstan thread':>18s}")
        for label, total, cpu in entries:
            overhead = (total - base) / steps
            ratio = total / thread
            extra = f"  (cpu {cpu * 1000 / steps:.3f} ms/step)" if cpu is not None else ""
            print(f"{label:38s} {total * 1000:10.1f} {total * 1000 / steps:9.3f} {overhead * 1000:17.3f} "
                  f"{ratio:17.1f}x{extra}")
            rows.append({"dag": shape, "system": label, "total_ms": total * 1000, "ms_per_step": total * 1000 / steps,
                         "overhead_ms_per_step": overhead * 1000, "ratio_vs_capstan_thread": ratio})
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("CAPSTAN_BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src"))
    sys.exit(main())
