"""End to end on the local executor with declared GPUs: a high-priority workload preempts a low one."""

from __future__ import annotations

import sys
from pathlib import Path

from capstan.queue.executor import LocalExecutor, detect_gpus, local_queue_yaml
from capstan.queue.manager import Backoff, QueueManager
from capstan.queue.model import PodSet
from capstan.queue.store import MemoryQueueStore

SCRIPT = """
import os, signal, sys, time
out = sys.argv[1]
def on_term(*_):
    with open(out, "a") as fh:
        fh.write(f"TERM {os.environ['CAPSTAN_RESTART_COUNT']}\\n")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
with open(out, "a") as fh:
    fh.write(f"START {os.environ['CAPSTAN_RESTART_COUNT']} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
time.sleep(float(sys.argv[2]))
with open(out, "a") as fh:
    fh.write("DONE\\n")
"""


def test_declared_gpus_and_detection() -> None:
    assert detect_gpus(2) == 2
    assert detect_gpus(runner=lambda cmd: "0\n1\n2\n") == 3
    assert detect_gpus(runner=lambda cmd: (_ for _ in ()).throw(OSError("no driver"))) == 0


def test_preemption_stops_low_priority_process_and_requeues_it(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    manager = QueueManager(MemoryQueueStore(), backoff=Backoff(base_s=0.2))
    manager.apply_config(local_queue_yaml(cpus=4, memory="8Gi", gpus=2))
    executor = LocalExecutor(manager, grace_s=5.0)
    low_log, high_log = tmp_path / "low.log", tmp_path / "high.log"
    two_gpus = [PodSet("main", 1, {"gpu": 2000, "cpu": 1000})]
    try:
        executor.submit("low", [sys.executable, str(script), str(low_log), "0.8"], two_gpus, priority_class="low")
        for _ in range(100):
            executor.step()
            if low_log.exists():
                break
            import time

            time.sleep(0.05)
        assert low_log.read_text().startswith("START 0 0,1")
        executor.submit("high", [sys.executable, str(script), str(high_log), "0.2"], two_gpus,
                        priority_class="high")
        executor.run_until_done(timeout_s=60)
    finally:
        executor.shutdown()
    low = low_log.read_text().splitlines()
    high = high_log.read_text().splitlines()
    assert low[:2] == ["START 0 0,1", "TERM 0"]  # preempted with SIGTERM
    assert low[2:] == ["START 1 0,1", "DONE"]  # requeued after backoff and run to completion
    assert high == ["START 0 0,1", "DONE"]
    assert executor.exit_codes == {"low": 0, "high": 0}
    assert manager.get("low").preemptions == 1
    assert manager.get("low").state == "Finished" and manager.get("high").state == "Finished"
