"""A non-torch gang: every rank variable is exactly torchrun's, a new MASTER_PORT per attempt, GPUs per worker from
the lease, worker logs kept per rank and attempt, rank-0-only tracking, and a module entry point."""

from __future__ import annotations

import json

from training_helpers import SCRIPTS, Env, events_of

from capstan.training.env import TORCHRUN_VARIABLES
from capstan.training.logs import attempts_on_disk, follow_logs, format_line, read_logs


def _seen(env: Env, attempt: int, rank: int) -> dict[str, str | None]:
    return json.loads((env.out / f"attempt-{attempt}-rank-{rank}.json").read_text())  # type: ignore[no-any-return]  # the script wrote a JSON object


def test_every_rank_variable_is_torchruns_and_the_port_changes_per_attempt(env: Env) -> None:
    spec = env.spec("rank_env.py", str(env.out), "--fail-rank", "3", "--fail-code", "7", workers=2,
                    nproc_per_worker=2, gpus=1, max_restarts=1, env={"EXTRA": "x"})
    record = env.submit_and_run(spec)
    assert (record.state, record.reason, record.restarts, record.attempt) == ("Succeeded", "Succeeded", 1, 2)
    ports = set()
    for attempt in (1, 2):
        seen = [_seen(env, attempt, rank) for rank in range(4)]
        port = seen[0]["MASTER_PORT"]
        ports.add(port)
        for rank, values in enumerate(seen):
            group, local = divmod(rank, 2)
            assert {k: values[k] for k in TORCHRUN_VARIABLES} == {
                "RANK": str(rank), "LOCAL_RANK": str(local), "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                "GROUP_RANK": str(group), "GROUP_WORLD_SIZE": "2", "ROLE_RANK": str(rank), "ROLE_NAME": "default",
                "ROLE_WORLD_SIZE": "4", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
                "TORCHELASTIC_RESTART_COUNT": str(attempt - 1), "TORCHELASTIC_MAX_RESTARTS": "1",
                "TORCHELASTIC_RUN_ID": record.id, "TORCHELASTIC_USE_AGENT_STORE": "False"}
            assert values["CUDA_VISIBLE_DEVICES"] == str(group)  # each worker its own GPU of the lease
            assert values["OMP_NUM_THREADS"] == "1"  # two processes per worker, as torchrun sets it
            assert (values["CAPSTAN_JOB_ID"], values["CAPSTAN_JOB_RUN_ID"]) == (record.id, record.run_id)
            assert values["CAPSTAN_JOB_ATTEMPT"] == str(attempt)
            assert values["CAPSTAN_CHECKPOINT_URI"] == f"runs:/{record.run_id}/checkpoints"
            assert (values["EXTRA"], values["CAPSTAN_URL"], values["cwd"]) == ("x", None, str(SCRIPTS))
    assert len(ports) == 2  # a free port chosen per attempt
    attempts = env.services.jobs.attempts(record.id)
    assert [(a.number, a.reason, a.rank, a.exit_code) for a in attempts] == [
        (1, "WorkerFailed", 3, 7), (2, "Succeeded", None, None)]
    assert {a.master_port for a in attempts} == {int(p) for p in ports if p}
    reasons = [e.reason for e in events_of(env, record.id)]
    assert reasons == ["Submitted", "Started", "WorkerFailed", "Started", "Succeeded"]
    # Every rank's stdout and stderr are kept, per attempt, and read per worker (a pod: its two processes).
    home = env.settings.home
    assert attempts_on_disk(home, record.id) == [1, 2]
    lines = read_logs(home, record.id, worker=1)
    assert [(ln.attempt, ln.worker, ln.rank, ln.stream, ln.text) for ln in lines] == [
        (2, 1, 2, "out", "hello from rank 2"), (2, 1, 2, "err", "warning from rank 2"),
        (2, 1, 3, "out", "hello from rank 3"), (2, 1, 3, "err", "warning from rank 3")]
    first = read_logs(home, record.id, worker=0, attempt=1, streams=("out",))
    assert [format_line(ln, prefix=True) for ln in first] == ["[rank 0] hello from rank 0",
                                                             "[rank 1] hello from rank 1"]
    assert list(follow_logs(home, record.id, worker=1, done=lambda: True)) == lines


def test_only_rank_zero_logs_to_the_jobs_run(env: Env) -> None:
    record = env.submit_and_run(env.spec("rank_env.py", str(env.out), workers=2, nproc_per_worker=2))
    assert record.state == "Succeeded" and record.run_id is not None
    run = env.services.tracking.get_run(record.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == record.id
    history = env.services.tracking.get_metric_history(record.run_id, "rank_seen").items
    assert [(m.value, m.step) for m in history] == [(0.0, 1)]  # rank 0's point only, not one per rank
    assert dict(run.data.params) == {"world": "4"}
    assert run.data.tags["capstan.job.id"] == record.id
    # No other run was created by the workers.
    runs = env.services.tracking.search_runs([run.info.experiment_id]).items
    assert [r.info.run_id for r in runs] == [record.run_id]


def test_log_all_ranks_lets_every_rank_log(env: Env) -> None:
    record = env.submit_and_run(env.spec("rank_env.py", str(env.out), workers=2, log_all_ranks=True))
    assert record.run_id is not None
    history = env.services.tracking.get_metric_history(record.run_id, "rank_seen").items
    assert sorted(m.value for m in history) == [0.0, 1.0]


def test_a_module_entry_point_runs_with_python_m(env: Env) -> None:
    record = env.submit_and_run(env.spec("pkg.hello", str(env.out), workers=2))
    assert record.state == "Succeeded" and record.spec.entry_kind == "module"
    assert sorted(p.name for p in env.out.iterdir()) == ["module-rank-0", "module-rank-1"]
    assert (env.out / "module-rank-1").read_text() == "2"
