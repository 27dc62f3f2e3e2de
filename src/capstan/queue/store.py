"""The queue manager's persistence port and its in-memory adapter (the SQL adapter is `capstan.queue.sql`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from capstan.queue.records import ACTIVE_STATES, UsageRecord, WorkloadRecord


class QueueStore(Protocol):
    """Where the manager keeps configuration, workloads and usage records."""

    def load_config(self) -> str | None:
        """The last applied configuration YAML, or None."""
        ...

    def save_config(self, text: str, applied_at: int) -> None:
        """Store the applied configuration YAML."""
        ...

    def put_workloads(self, records: Sequence[WorkloadRecord]) -> None:
        """Insert or replace workload records (one transaction)."""
        ...

    def active_workloads(self) -> list[WorkloadRecord]:
        """Workloads that are pending, admitted or being evicted."""
        ...

    def get_workload(self, workload_id: str) -> WorkloadRecord | None:
        """One workload record, in any state."""
        ...

    def open_usage(self, record: UsageRecord) -> None:
        """Start a usage record when a workload is admitted."""
        ...

    def close_usage(self, workload_id: str, end: int) -> None:
        """End the open usage record of a workload."""
        ...

    def usage_since(self, since: int) -> list[UsageRecord]:
        """Usage records still open or ended after ``since``."""
        ...


class MemoryQueueStore:
    """`QueueStore` in process memory (tests, the simulator, single-process demos)."""

    def __init__(self) -> None:
        self._config: str | None = None
        self._workloads: dict[str, WorkloadRecord] = {}
        self._usage: list[UsageRecord] = []

    def load_config(self) -> str | None:
        """The last applied configuration YAML, or None."""
        return self._config

    def save_config(self, text: str, applied_at: int) -> None:
        """Store the applied configuration YAML."""
        del applied_at
        self._config = text

    def put_workloads(self, records: Sequence[WorkloadRecord]) -> None:
        """Insert or replace workload records."""
        for r in records:
            self._workloads[r.id] = r

    def active_workloads(self) -> list[WorkloadRecord]:
        """Workloads that are pending, admitted or being evicted."""
        return [r for r in self._workloads.values() if r.state in ACTIVE_STATES]

    def get_workload(self, workload_id: str) -> WorkloadRecord | None:
        """One workload record, in any state."""
        return self._workloads.get(workload_id)

    def open_usage(self, record: UsageRecord) -> None:
        """Start a usage record."""
        self._usage.append(record)

    def close_usage(self, workload_id: str, end: int) -> None:
        """End the open usage record of a workload."""
        from dataclasses import replace

        for i, r in enumerate(self._usage):
            if r.workload_id == workload_id and r.end is None:
                self._usage[i] = replace(r, end=end)

    def usage_since(self, since: int) -> list[UsageRecord]:
        """Usage records still open or ended after ``since``."""
        return [r for r in self._usage if r.end is None or r.end > since]
