"""The classifier on crafted facts (pure): each cause, the order of the rules, the log-line readers, and the names
``describe`` takes."""

from __future__ import annotations

import pytest

from capstan.errors import InvalidParameterValue
from capstan.events.records import Event
from capstan.troubleshoot.classify import Cause, Facts, classify, cuda_oom_line, error_line, missing_module
from capstan.troubleshoot.reader import parse_ref, resolve_kind
from capstan.troubleshoot.timeline import Peak, TimelineItem, event_items, merge

MI = 2**20
TRACEBACK = [
    "epoch 3",
    "Traceback (most recent call last):",
    '  File "train.py", line 9, in <module>',
    "    step()",
    "    ^^^^^^",
    "KeyError: 'labels'",
    "",
    "During handling of the above exception, another exception occurred:",
    "",
    "Traceback (most recent call last):",
    '  File "train.py", line 11, in <module>',
    "    raise RuntimeError('no labels in batch 7')",
    "RuntimeError: no labels in batch 7",
    "  with a second line of message",
    "flushing 2 open files",
]
CUDA = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
        "79.19 GiB of which 3.12 GiB is free.")


def failed(**fields: object) -> Facts:
    return Facts("step", "failed", **fields)  # type: ignore[arg-type]  # test data


def test_error_line_is_the_last_tracebacks_exception_line() -> None:
    assert error_line(TRACEBACK) == "RuntimeError: no labels in batch 7"


@pytest.mark.parametrize(("lines", "expected"), [
    (["loading", "ValueError: bad shape (3, 4)", "cleanup done"], "ValueError: bad shape (3, 4)"),
    (["loading", "error: --data: /x does not exist", "bye"], "error: --data: /x does not exist"),
    (["loading", "  ", "fatal: disk full", ""], "fatal: disk full"),
    ([], ""),
])
def test_error_line_without_a_traceback(lines: list[str], expected: str) -> None:
    assert error_line(lines) == expected


def test_readers_of_import_and_cuda_failures() -> None:
    assert missing_module(["x", "ModuleNotFoundError: No module named 'sklearn.ensemble'"]) == \
        ("sklearn.ensemble", "ModuleNotFoundError: No module named 'sklearn.ensemble'")
    assert missing_module(["ImportError: cannot import name 'foo' from 'mypkg.models' (/a/b.py)"])[0] == \
        "mypkg.models"  # type: ignore[index]  # found
    assert missing_module(["all fine"]) is None
    assert cuda_oom_line(["step 1", CUDA, "exiting"]) == CUDA
    assert cuda_oom_line(["java.lang.OutOfMemoryError: Java heap space"]) is None


def test_cuda_out_of_memory_comes_before_the_exit_code() -> None:
    found = classify(failed(reason="NonZeroExit", exit_code=1, log_tail=("Traceback (most recent call last):",
                                                                         '  File "t.py", line 1', CUDA)))
    assert found.cause is Cause.CUDA_OUT_OF_MEMORY
    assert found.evidence[0] == f"log: {CUDA}"
    assert "batch size" in found.hint


@pytest.mark.parametrize("facts", [
    failed(reason="OOMKilled"),
    failed(reason="WorkerFailed", exit_code=137),
    failed(reason="WorkerFailed", exit_code=-9, oom_killed=True),
    failed(reason="Exception", exit_code=1, log_tail=("Traceback (most recent call last):", "  x", "MemoryError")),
])
def test_oom_from_each_kind_of_record(facts: Facts) -> None:
    assert classify(facts).cause is Cause.OOM_KILLED


def test_oom_with_peak_and_limit() -> None:
    found = classify(failed(reason="OOMKilled", exit_code=137, peak_memory=98 * MI, memory_limit=100 * MI))
    assert found.summary == "ran out of memory: peak 98Mi of its 100Mi limit (98%)"
    assert dict(found.data) == {"peak_memory": 98 * MI, "memory_limit": 100 * MI}
    assert found.hint == "raise the memory request (e.g. 200Mi), or process the data in smaller pieces"
    assert "exit code 137" in found.evidence


def test_a_sigkill_without_the_oom_counter_is_not_oom() -> None:
    found = classify(failed(reason="WorkerFailed", exit_code=-9))
    assert (found.cause, found.summary) == (Cause.NON_ZERO_EXIT, "was killed by SIGKILL")


def test_non_zero_exit_names_the_last_error_line_and_signals() -> None:
    found = classify(failed(reason="WorkerFailed", exit_code=1, log_tail=tuple(TRACEBACK)))
    assert found.summary == "exited with code 1: RuntimeError: no labels in batch 7"
    assert dict(found.data) == {"exit_code": 1, "line": "RuntimeError: no labels in batch 7"}
    assert classify(failed(exit_code=143)).summary == "exited with code 143 (SIGTERM)"


def test_import_error_names_the_module_to_install() -> None:
    found = classify(failed(reason="Exception", exit_code=1,
                            message="ModuleNotFoundError: No module named 'torchvision' (at job.py:3)"))
    assert (found.cause, found.summary) == (Cause.IMPORT_ERROR, "could not import module 'torchvision'")
    assert found.hint.startswith("install 'torchvision' where the workload runs (pip install torchvision)")


def test_timeout_reads_its_limit_from_the_message() -> None:
    found = classify(failed(reason="Timeout", message="attempt 2 exceeded its timeout of 2.5s"))
    assert (found.cause, found.summary) == (Cause.TIMEOUT, "ran past its time limit of 2.5s and was stopped")
    assert classify(failed(reason="DeadlineExceeded", timeout_s=30)).summary == \
        "ran past its time limit of 30s and was stopped"


def test_unschedulable_and_waiting() -> None:
    never = classify(failed(reason="Unschedulable", message="requests 8 GPU(s), which ClusterQueue a can never admit"))
    assert never.summary == "the queue can never admit it: requests 8 GPU(s), which ClusterQueue a can never admit"
    waiting = classify(Facts("job", "pending", "WaitingForQuota", "", queue_reason="WaitingForQuota",
                             queue_message="insufficient quota for cpu: requested 2, available 0",
                             queue_hint="lower the request"))
    assert waiting.cause is Cause.UNSCHEDULABLE
    assert waiting.summary == "waiting for the queue: WaitingForQuota: insufficient quota for cpu: requested 2, " \
                              "available 0"
    assert waiting.hint == "lower the request"
    plain = classify(Facts("job", "pending", "", "no runner has picked it up"))
    assert (plain.cause, plain.summary) == (Cause.PENDING, "pending: no runner has picked it up")


def test_preemption_says_who_and_how_much_work_was_stopped() -> None:
    found = classify(Facts("job", "pending", "Preempted", "preempted by the queue", preemptions=2,
                           preempted_by="urgent", lost_ms=95_000))
    assert found.cause is Cause.PREEMPTED
    assert found.summary == ("preempted by urgent: the queue took its quota back for higher-priority work; it waits "
                             "to be admitted again")
    assert "the stopped attempt had run for 1m35s; work since its last checkpoint is done again" in found.evidence
    assert dict(found.data) == {"preemptions": 2, "lost_ms": 95_000}
    evicting = classify(Facts("workload", "running", "Preempted", "preempted by urgent (LowerPriority)"))
    assert evicting.summary == "preempted: the queue took its quota back for higher-priority work; it is being stopped"


def test_other_states() -> None:
    assert classify(Facts("step", "running", message="attempt 2")).summary == "running (attempt 2)"
    done = classify(Facts("job", "succeeded", earlier=("attempt 1: WorkerFailed: rank 0 exited with code 1",)))
    assert (done.cause, done.summary) == (Cause.SUCCEEDED, "succeeded after 1 failed attempt(s)")
    assert done.evidence == ("earlier: attempt 1: WorkerFailed: rank 0 exited with code 1",)
    assert classify(Facts("trial", "succeeded", "Pruned")).cause is Cause.PRUNED
    assert classify(Facts("run", "cancelled", "", "by alice")).summary == "cancelled: by alice"
    assert classify(failed(reason="UpstreamFailed", message="needs 'prep', which failed")).cause is \
        Cause.UPSTREAM_FAILED
    other = classify(failed(reason="WorkerLost", message="the worker process died"))
    assert (other.cause, other.summary) == (Cause.ERROR, "failed: WorkerLost: the worker process died")


def test_kinds_aliases_and_short_forms() -> None:
    assert [resolve_kind(k) for k in ("job", "j", "pipeline", "pipe", "p", "prun", "wl", "w", "deploy", "d", "r",
                                      "s", "t", "RUN")] == \
        ["job", "job", "pipeline-run", "pipeline-run", "pipeline-run", "pipeline-run", "workload", "workload",
         "deployment", "deployment", "run", "step", "trial", "run"]
    assert parse_ref("step/3f2a/train[0]") == ("step", "3f2a/train[0]")
    assert parse_ref("workload/job/train-abc123") == ("workload", "job/train-abc123")
    with pytest.raises(InvalidParameterValue, match=r"^kind: unknown kind 'x'"):
        resolve_kind("x")
    with pytest.raises(InvalidParameterValue, match=r"^KIND/ID: expected a kind and an id"):
        parse_ref("job/ ")
    with pytest.raises(InvalidParameterValue, match=r"^id: at most 1024 characters"):
        parse_ref("job/" + "a" * 1025)


def test_items_merge_on_one_axis_and_keep_the_latest() -> None:
    events = [Event(1, 30, "job", "j", "Warning", "WorkerFailed", "rank 1 exited with code 3"),
              Event(2, 10, "job", "j", "Normal", "Submitted", "queued"),
              Event(3, 20, "job", "j", "Warning", "Preempted", "preempted by urgent"),
              Event(4, 40, "job", "j", "Warning", "Failed", "all restarts used")]
    items = event_items(events)
    assert [(i.kind, i.level) for i in items] == [("restart", "error"), ("event", "info"), ("restart", "warning"),
                                                 ("event", "error")]
    merged, truncated = merge(items, [TimelineItem(20, "log", "rank 1", "boom", "error")], limit=4)
    assert [i.at_ms for i in merged] == [20, 20, 30, 40] and truncated
    assert [i.source for i in merged[:2]] == ["job/j", "rank 1"]  # equal times keep their order
    assert merge(items)[1] is False
    assert Peak("memory", 98 * MI, 100 * MI, "attempt 1").text() == "memory: 98Mi of 100Mi (98%) in attempt 1"
    assert Peak("memory", None, 100 * MI, "each worker").to_dict()["fraction"] is None
