"""What a machine offers (`Capacity`): CPUs, memory and NVIDIA GPUs found through NVML, ``nvidia-smi`` or
``/proc/driver/nvidia``, and the short GPU model labels steps and queues use as flavors."""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a machine offers: CPUs, memory in bytes and GPUs (index -> model name, empty when unknown)."""

    cpu: float
    memory: int
    gpus: tuple[tuple[str, str], ...] = ()

    @classmethod
    def cached(cls) -> Capacity:
        """`detect` once per process."""
        if not _DETECTED:
            _DETECTED.append(cls.detect())
        return _DETECTED[0]

    @classmethod
    def detect(cls) -> Capacity:
        """This machine's CPUs (affinity-aware), total memory and NVIDIA GPUs (honouring CUDA_VISIBLE_DEVICES)."""
        try:
            cpus = float(len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            cpus = float(os.cpu_count() or 1)
        try:
            import psutil

            memory = int(psutil.virtual_memory().total)
        except (ImportError, OSError):
            memory = 0
        return cls(cpus, memory, tuple(detect_gpus()))

    def with_declared_gpus(self, count: int, model: str = "") -> Capacity:
        """This capacity with ``count`` declared GPUs (indices ``0..count-1``) instead of the detected ones."""
        return Capacity(self.cpu, self.memory, tuple((str(i), model) for i in range(count)))


_DETECTED: list[Capacity] = []


def detect_gpus(visible: str | None = None, *, runner: Callable[[list[str]], str] | None = None,
                use_nvml: bool = True) -> list[tuple[str, str]]:
    """``(index, model)`` of this machine's NVIDIA GPUs, found through NVML (``pynvml``), else ``nvidia-smi``, else
    ``/proc/driver/nvidia``; restricted to ``visible`` (``CUDA_VISIBLE_DEVICES`` when None) if that is set.

    ``runner`` runs a command and returns its stdout (tests pass a fake ``nvidia-smi``).
    """
    if visible is None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    models = (_nvml_models() if use_nvml and runner is None else None)
    if models is None:
        models = _smi_models(runner)
    if models is None:
        models = _procfs_models()
    if visible is not None:
        wanted = [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return [(v, models[int(v)] if v.isdigit() and int(v) < len(models) else "") for v in wanted]
    return [(str(i), model) for i, model in enumerate(models)]


def _nvml_models() -> list[str] | None:
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001  # NVMLError_* (no driver, no permission): fall back to nvidia-smi
        return None
    try:
        names = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            name = nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return names
    except Exception:  # noqa: BLE001  # a device NVML cannot read: fall back to nvidia-smi
        return None
    finally:
        with contextlib.suppress(Exception):  # shutting NVML down is best effort
            nvml.nvmlShutdown()


def _smi_models(runner: Callable[[list[str]], str] | None) -> list[str] | None:
    if runner is None:
        if shutil.which("nvidia-smi") is None:
            return None

        def runner(cmd: list[str]) -> str:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout
    try:
        out = runner(["nvidia-smi", "--query-gpu=index,name", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return None
    rows: list[tuple[int, str]] = []
    for line in out.splitlines():
        index, _, name = line.partition(",")
        if index.strip().isdigit():
            rows.append((int(index), name.strip()))
    return [name for _i, name in sorted(rows)]


def _procfs_models() -> list[str]:
    base = "/proc/driver/nvidia/gpus"
    models: list[str] = []
    try:
        for entry in sorted(os.listdir(base)):
            model = ""
            try:
                with open(os.path.join(base, entry, "information")) as fh:
                    for line in fh:
                        if line.startswith("Model:"):
                            model = line.split(":", 1)[1].strip()
            except OSError:
                pass
            models.append(model)
    except OSError:
        return []
    return models


_VENDOR_WORDS = re.compile(r"\b(nvidia|tesla|geforce|quadro)\b", re.IGNORECASE)


def gpu_model_label(model: str) -> str | None:
    """A short, lower-case name for a GPU model, as steps write ``gpu_flavor``: ``NVIDIA A100-SXM4-80GB`` -> ``a100``,
    ``NVIDIA H200`` -> ``h200``, ``NVIDIA GeForce RTX 4090`` -> ``rtx4090``; None when the model is unknown."""
    rest = _VENDOR_WORDS.sub(" ", model).strip()
    if not rest:
        return None
    return re.sub(r"[^a-z0-9._]", "", rest.split("-")[0].lower()) or None
