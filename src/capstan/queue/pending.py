"""Pending workloads, kept per ClusterQueue in admission order and grouped by request shape.

Each ClusterQueue's queue is ordered by (priority descending, creation time, arrival sequence). Inside a queue
workloads are grouped into *buckets* of identical request shape (pod counts, requests, selectors,
tolerations). When a bucket's head cannot be admitted, nothing behind it in the same bucket can be either (same
request, lower or equal priority, newer), so a best-effort cycle skips the whole bucket: a cycle costs
O(ClusterQueues x shapes), not O(pending workloads).
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Hashable, Iterator, Mapping
from typing import TYPE_CHECKING

from capstan.errors import ResourceAlreadyExists
from capstan.queue.model import Workload

if TYPE_CHECKING:  # the engine's record, only named here
    from capstan.queue.preemption import SearchReport

SortKey = tuple[int, float, int]


def shape_key(workload: Workload) -> Hashable:
    """Workloads with equal keys request exactly the same resources in the same way."""
    return tuple(
        (ps.count if ps.min_count is None else (ps.count, ps.min_count), tuple(sorted(ps.requests.items())),
         tuple(sorted(ps.node_selector.items())), ps.tolerations)
        for ps in workload.pod_sets)


class ClusterQueuePending:
    """One ClusterQueue's pending workloads.

    Besides the buckets, it keeps each bucket under a small integer id and the sorted list of bucket heads, so
    that a cursor starts from a copy of that list instead of visiting every bucket.
    """

    __slots__ = ("_next_id", "buckets", "by_age", "heads", "ids", "keys", "lists", "shapes", "vecs", "vectors",
                 "workloads")

    def __init__(self) -> None:
        self.buckets: dict[Hashable, list[tuple[SortKey, str]]] = {}
        # Total request per resource of each shape (every workload of a bucket asks the same).
        self.vectors: dict[Hashable, dict[str, int]] = {}
        self.workloads: dict[str, Workload] = {}
        self.keys: dict[str, tuple[Hashable, SortKey]] = {}
        # Bucket ids (in creation order), and per id the bucket, its vector and its shape.
        self.ids: dict[Hashable, int] = {}
        self.lists: dict[int, list[tuple[SortKey, str]]] = {}
        self.vecs: dict[int, dict[str, int]] = {}
        self.shapes: dict[int, Hashable] = {}
        # (-priority, created, sequence, bucket id, 0) of every bucket's head, sorted: a ready-made heap.
        self.heads: list[tuple[int, float, int, int, int]] = []
        # (created, sequence, id) of every workload, sorted: the oldest first, for the aging rule.
        self.by_age: list[tuple[float, int, str]] = []
        self._next_id = 0

    def __len__(self) -> int:
        return len(self.workloads)

    def cursor(self) -> Cursor:
        """A fresh iterator over this queue in admission order that can skip whole buckets."""
        return Cursor(self)

    def ordered(self) -> list[Workload]:
        """Every pending workload of the queue in admission order (O(n log n); for status and why)."""
        entries = sorted(e for bucket in self.buckets.values() for e in bucket)
        return [self.workloads[wid] for _key, wid in entries]

    def head(self) -> Workload | None:
        """The first workload in admission order."""
        if not self.heads:
            return None
        top = self.heads[0]
        return self.workloads[self.lists[top[3]][0][1]]

    def aged(self, cutoff: float) -> Iterator[Workload]:
        """Workloads created at or before ``cutoff``, oldest first (creation time, then submission)."""
        for created, _seq, wid in self.by_age:
            if created > cutoff:
                return
            yield self.workloads[wid]

    def add(self, workload: Workload, key: SortKey) -> None:
        """Insert a workload under its sort key (`PendingQueues.push` checks it is not already pending)."""
        shape = shape_key(workload)
        self.workloads[workload.id] = workload
        self.keys[workload.id] = (shape, key)
        bid = self.ids.get(shape)
        if bid is None:
            bid = self.ids[shape] = self._next_id
            self._next_id += 1
            bucket: list[tuple[SortKey, str]] = []
            self.buckets[shape] = self.lists[bid] = bucket
            vector: dict[str, int] = {}
            # The least the workload may be admitted with (its full request unless a pod set has a minCount):
            # the engine refuses a bucket cheaply only when even that is more than it could get.
            for ps in workload.pod_sets:
                for r, v in ps.requests.items():
                    vector[r] = vector.get(r, 0) + ps.least * v
            self.vectors[shape] = self.vecs[bid] = vector
            self.shapes[bid] = shape
        else:
            bucket = self.lists[bid]
        insort(self.by_age, (key[1], key[2], workload.id))
        entry = (key, workload.id)
        index = bisect_right(bucket, entry)
        bucket.insert(index, entry)
        if index == 0:
            if len(bucket) > 1:
                old = bucket[1][0]
                del self.heads[bisect_left(self.heads, (old[0], old[1], old[2], bid, 0))]
            insort(self.heads, (key[0], key[1], key[2], bid, 0))

    def drop(self, workload_id: str) -> Workload:
        """Take out a pending workload of this queue and return it."""
        shape, key = self.keys.pop(workload_id)
        del self.by_age[bisect_left(self.by_age, (key[1], key[2], workload_id))]
        bid = self.ids[shape]
        bucket = self.lists[bid]
        index = bisect_left(bucket, (key, workload_id))
        del bucket[index]
        if index == 0:
            del self.heads[bisect_left(self.heads, (key[0], key[1], key[2], bid, 0))]
            if bucket:
                new = bucket[0][0]
                insort(self.heads, (new[0], new[1], new[2], bid, 0))
        if not bucket:
            del self.buckets[shape], self.vectors[shape], self.ids[shape]
            del self.lists[bid], self.vecs[bid], self.shapes[bid]
        return self.workloads.pop(workload_id)


class Cursor:
    """Walks a `ClusterQueuePending` in order; `skip_bucket` drops the rest of the current head's bucket.

    A cursor is valid until its queue changes. ``heap`` holds (-priority, created, sequence, bucket id, position
    in the bucket) entries, the current head first; the admission engine reads it directly (read-only).
    """

    __slots__ = ("heap", "queue")

    def __init__(self, queue: ClusterQueuePending) -> None:
        self.queue = queue
        # The sorted list of bucket heads is already a heap.
        self.heap: list[tuple[int, float, int, int, int]] = list(queue.heads)

    def peek(self) -> Workload | None:
        """The current head, or None when exhausted."""
        if not self.heap:
            return None
        top = self.heap[0]
        return self.queue.workloads[self.queue.lists[top[3]][top[4]][1]]

    def top(self) -> tuple[int, float, int, int, int] | None:
        """The current head's heap entry, or None when exhausted."""
        return self.heap[0] if self.heap else None

    def bucket(self) -> int:
        """The id of the current head's bucket."""
        return self.heap[0][3]

    def shape(self) -> Hashable:
        """The request shape of the current head (see `shape_key`)."""
        return self.queue.shapes[self.heap[0][3]]

    def vector(self) -> dict[str, int]:
        """Total request per resource of the current head."""
        return self.queue.vecs[self.heap[0][3]]

    def advance(self) -> None:
        """Move past the current head, keeping its bucket."""
        _p, _c, _s, bid, pos = heapq.heappop(self.heap)
        bucket = self.queue.lists[bid]
        if pos + 1 < len(bucket):
            key = bucket[pos + 1][0]
            heapq.heappush(self.heap, (key[0], key[1], key[2], bid, pos + 1))

    def skip_bucket(self) -> None:
        """Move past the current head and everything behind it with the same request shape."""
        heapq.heappop(self.heap)

    def exhausted(self) -> bool:
        """True when nothing is left."""
        return not self.heap


class PendingQueues:
    """Pending workloads of every ClusterQueue, plus the memo of queues known to be blocked."""

    def __init__(self) -> None:
        self._queues: dict[str, ClusterQueuePending] = {}
        self._where: dict[str, str] = {}
        self._blocked: dict[str, int] = {}
        self._futile: dict[str, tuple[int, Workload, SearchReport]] = {}
        self._seq = 0
        # `cluster_queues()`, kept until a queue gains its first workload or loses its last one.
        self._names: list[str] | None = None

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, workload_id: object) -> bool:
        return workload_id in self._where

    def push(self, workload: Workload, *, seq: int | None = None) -> None:
        """Queue a workload in its ClusterQueue; ``seq`` keeps arrival order across re-queues when given."""
        if workload.id in self._where:
            raise ResourceAlreadyExists(f"workload {workload.id!r} is already pending")
        if seq is None:
            self._seq += 1
            seq = self._seq
        queue = self._queues.setdefault(workload.cluster_queue, ClusterQueuePending())
        if not queue.workloads:
            self._names = None
        queue.add(workload, (-workload.priority, workload.created, seq))
        self._where[workload.id] = workload.cluster_queue
        self._blocked.pop(workload.cluster_queue, None)

    def remove(self, workload_id: str) -> Workload | None:
        """Take a workload out (admitted, cancelled); returns it, or None when it was not pending."""
        cq = self._where.pop(workload_id, None)
        if cq is None:
            return None
        queue = self._queues[cq]
        workload = queue.drop(workload_id)
        if not queue.workloads:
            self._names = None
        return workload

    def get(self, workload_id: str) -> Workload | None:
        """The pending workload with this id, or None."""
        cq = self._where.get(workload_id)
        return None if cq is None else self._queues[cq].workloads[workload_id]

    def sequence(self, workload_id: str) -> int:
        """The arrival sequence number of a pending workload."""
        cq = self._where[workload_id]
        return self._queues[cq].keys[workload_id][1][2]

    def queue(self, cluster_queue: str) -> ClusterQueuePending | None:
        """The pending queue of one ClusterQueue (None when nothing was ever queued there)."""
        return self._queues.get(cluster_queue)

    def cluster_queues(self) -> list[str]:
        """Names of ClusterQueues with pending workloads, sorted."""
        if self._names is None:
            self._names = sorted(name for name, q in self._queues.items() if q.workloads)
        return list(self._names)

    def workloads(self) -> Iterator[Workload]:
        """Every pending workload (no particular order)."""
        for queue in self._queues.values():
            yield from queue.workloads.values()

    def position(self, workload_id: str) -> int:
        """1-based position of a pending workload in its ClusterQueue's admission order."""
        cq = self._where[workload_id]
        queue = self._queues[cq]
        _shape, key = queue.keys[workload_id]
        return 1 + sum(bisect_left(bucket, (key, workload_id)) for bucket in queue.buckets.values())

    def mark_blocked(self, blocked: Mapping[str, int]) -> None:
        """Remember queues that admitted nothing at a cohort-tree version (from `CycleResult.blocked`)."""
        self._blocked.update(blocked)

    def blocked_at(self, cluster_queue: str) -> int | None:
        """The cohort-tree version at which the queue was last found blocked, if still valid."""
        return self._blocked.get(cluster_queue)

    def mark_futile(self, futile: Mapping[str, tuple[int, Workload, SearchReport]]) -> None:
        """Remember refused victim searches (from `CycleResult.futile`)."""
        self._futile.update(futile)

    def futile_at(self, cluster_queue: str) -> tuple[int, Workload, SearchReport] | None:
        """The version and workload of the queue's last remembered refused search (the engine checks both)."""
        return self._futile.get(cluster_queue)

    def unblock_all(self) -> None:
        """Forget every blocked mark and remembered search (after a configuration change)."""
        self._blocked.clear()
        self._futile.clear()
