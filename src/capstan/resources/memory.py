"""A process's peak resident memory as Linux reports it, shared by every kind of workload that measures one."""

from __future__ import annotations

from pathlib import Path

__all__ = ["vm_hwm"]


def vm_hwm(pid: int | str = "self") -> int | None:
    """The peak resident memory (bytes) of process ``pid``'s current program (``VmHWM`` of ``/proc/PID/status``);
    None where it cannot be read (no such process, an exited one, no ``/proc``)."""
    try:
        data = Path(f"/proc/{pid}/status").read_bytes()
        start = data.index(b"VmHWM:")
        return int(data[start:data.index(b"\n", start)].split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
