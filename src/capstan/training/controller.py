"""`JobController`: runs the training jobs submitted to ``capstan server`` (``POST /api/v1/jobs``).

One controller runs in the server's leader process. Every `SCAN_INTERVAL_S` (at once after `wake`) it lists the
active jobs and claims each one no live runner holds (`JobStore.claim`): a new submission (no owner), or a job whose
runner died: on this machine, its ``host:pid`` is gone; on another machine (a leader that died with its machine),
its heartbeat is older than `capstan.training.jobs_sql.OWNER_LEASE_MS`. The claim is conditional on the owner and
heartbeat it found, so two leaders (an old one and a new one) never both adopt a job. Each claimed job runs in a
thread of its own with `JobRunner.run`; a job its dead runner left running is adopted there (its open attempt ends
``NodeLost``, an event says so, and the gang restarts from its last checkpoint). Jobs held by another live process
(a ``capstan train`` or SDK run in the foreground) are left alone.

`stop` (a clean server shutdown) stops every gang, ends its attempt ``NodeLost`` and hands the job back ``Pending``
without an owner, so the next leader starts it again.
"""

from __future__ import annotations

import logging
import threading

from capstan.errors import InvalidState
from capstan.training.ports import ACTIVE_STATES, JobStore
from capstan.training.runner import JobRunner

__all__ = ["SCAN_INTERVAL_S", "JobController"]

log = logging.getLogger("capstan.training.controller")

SCAN_INTERVAL_S = 1.0
MAX_JOBS_PER_SCAN = 1000


class JobController:
    """Claims and runs active jobs that no live runner holds (see the module docstring)."""

    def __init__(self, runner: JobRunner, *, store: JobStore | None = None,
                 interval_s: float = SCAN_INTERVAL_S) -> None:
        self._runner = runner
        self._store = store or runner.store
        self._interval_s = interval_s
        self._threads: dict[str, threading.Thread] = {}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> list[str]:
        """Ids of the jobs this controller is running now."""
        with self._lock:
            return sorted(job_id for job_id, thread in self._threads.items() if thread.is_alive())

    def start(self) -> None:
        """Scan on a thread until `stop`."""
        self._thread = threading.Thread(target=self._loop, name="capstan-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Scan now (a job was submitted or cancelled)."""
        self._wake.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop scanning, stop every job's gang and hand the jobs back; returns once their threads have ended."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.scan()
            except Exception:  # the store may be briefly unavailable; the next scan retries
                log.exception("scanning training jobs failed")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def scan(self) -> list[str]:
        """Claim and start every active job no live runner holds; returns the ids started."""
        started: list[str] = []
        owner = self._runner.owner
        for record in self._store.list(states=sorted(ACTIVE_STATES), limit=MAX_JOBS_PER_SCAN):
            with self._lock:
                thread = self._threads.get(record.id)
                if thread is not None and thread.is_alive():
                    continue
            if self._stopping.is_set() or not self._store.claim(record.id, owner):
                continue
            thread = threading.Thread(target=self._run, args=(record.id,), name=f"capstan-job-{record.id}",
                                      daemon=True)
            with self._lock:
                self._threads[record.id] = thread
            thread.start()
            started.append(record.id)
        return started

    def _run(self, job_id: str) -> None:
        try:
            self._runner.run(job_id, stop=self._stopping)
        except InvalidState as exc:  # another runner holds the job (took it over): it is theirs to finish
            log.warning("training job %s: %s", job_id, exc)
        except Exception:  # the runner has recorded the failure on the job
            log.exception("training job %s failed in its runner", job_id)
        finally:
            with self._lock:
                self._threads.pop(job_id, None)
