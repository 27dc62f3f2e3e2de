"""The shared event log's record type."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

NORMAL = "Normal"
WARNING = "Warning"


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of the append-only event log.

    ``kind``/``object_id`` name the object (``run/<uuid>``, ``workload/<id>``, ``pipeline-run/<id>``...), ``type``
    is ``Normal`` or ``Warning``, ``reason`` a CamelCase code (``RunStarted``, ``CacheHit``, ``Preempted``...).
    """

    id: int
    time: int
    kind: str
    object_id: str
    type: str
    reason: str
    message: str
    project: str = ""
    data: Mapping[str, object] = field(default_factory=dict)
