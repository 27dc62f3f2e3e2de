"""Usage showback: GPU-, CPU- and memory-hours from admission records, grouped by project, queue or user (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from capstan.errors import InvalidParameterValue
from capstan.queue.records import UsageRecord
from capstan.resources.quantity import GPU_RESOURCES, MILLI

GROUPINGS = ("project", "queue", "user")
PRICE_KEYS = ("gpu", "cpu", "memory")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Resource-hours of one group. Memory is in GB-hours with GB = 2**30 bytes."""

    key: str
    workloads: int
    gpu_hours: float
    cpu_hours: float
    memory_gb_hours: float
    cost: float | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"key": self.key, "workloads": self.workloads, "gpu_hours": self.gpu_hours,
                "cpu_hours": self.cpu_hours, "memory_gb_hours": self.memory_gb_hours, "cost": self.cost}


def parse_since(text: str, *, now_ms: int) -> int:
    """``7d``, ``12h``, ``30m``, ``90s`` or ``2w`` before ``now_ms``, as epoch milliseconds."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidParameterValue(f"--since: {text!r} is not a window such as 7d, 12h, 30m or 2w")
    return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def parse_prices(text: str | None) -> dict[str, float]:
    """``gpu=2.5,cpu=0.05,memory=0.01`` (price per resource-hour; memory per GB-hour)."""
    if not text:
        return {}
    prices: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in PRICE_KEYS:
            raise InvalidParameterValue(f"--price: {part.strip()!r} is not one of gpu=N, cpu=N, memory=N")
        try:
            price = float(value)
        except ValueError:
            raise InvalidParameterValue(f"--price: {key}: {value.strip()!r} is not a number") from None
        if price < 0:
            raise InvalidParameterValue(f"--price: {key}: must not be negative")
        prices[key] = price
    return prices


def usage_report(records: Iterable[UsageRecord], *, by: str, since_ms: int, now_ms: int,
                 prices: Mapping[str, float] | None = None) -> list[UsageRow]:
    """Resource-hours inside ``[since_ms, now_ms]`` per group, biggest GPU users first."""
    if by not in GROUPINGS:
        raise InvalidParameterValue(f"--by: {by!r} is not one of {', '.join(GROUPINGS)}")
    acc: dict[str, list[float]] = {}
    counts: dict[str, set[str]] = {}
    for r in records:
        start = max(r.start, since_ms)
        end = min(r.end if r.end is not None else now_ms, now_ms)
        if end <= start:
            continue
        hours = (end - start) / 3_600_000
        key = r.project if by == "project" else r.local_queue if by == "queue" else (r.user or "-")
        gpu = sum(q for (_f, res), q in r.usage.items() if res in GPU_RESOURCES) / MILLI
        cpu = sum(q for (_f, res), q in r.usage.items() if res == "cpu") / MILLI
        mem = sum(q for (_f, res), q in r.usage.items() if res == "memory") / MILLI / 2**30
        row = acc.setdefault(key, [0.0, 0.0, 0.0])
        row[0] += gpu * hours
        row[1] += cpu * hours
        row[2] += mem * hours
        counts.setdefault(key, set()).add(r.workload_id)
    out = []
    for key, (gpu_h, cpu_h, mem_h) in acc.items():
        cost = None
        if prices:
            cost = gpu_h * prices.get("gpu", 0.0) + cpu_h * prices.get("cpu", 0.0) + mem_h * prices.get("memory", 0.0)
        out.append(UsageRow(key, len(counts[key]), gpu_h, cpu_h, mem_h, cost))
    out.sort(key=lambda row: (-row.gpu_hours, -row.cpu_hours, row.key))
    return out
