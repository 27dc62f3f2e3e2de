"""Shared by the LoRA and fine-tuning tests: a Capstan home with the tiny model registered, and ``capstan`` run as a
real subprocess on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from capstan.sdk.backends import TrackingBackend, open_backend
from capstan.settings import Settings

ROWS: list[dict[str, Any]] = [
    {"prompt": "hello world", "completion": " capstan runs pipelines"},
    {"prompt": "user: what is the weather?", "completion": " it is sunny today"},
    {"messages": [{"role": "user", "content": "what is the weather?"},
                  {"role": "assistant", "content": "it is sunny today"}]},
    {"text": "the quick brown fox jumps over the lazy dog"},
]


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as a JSONL file at ``path``."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def worker_env(home: Path) -> dict[str, str]:
    """The environment of a ``capstan`` subprocess on ``home`` (one thread: the machine is shared)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAPSTAN_")}
    env.update(CAPSTAN_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def capstan(home: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``capstan ARGS`` to its end."""
    return subprocess.run([sys.executable, "-m", "capstan", *args], env=worker_env(home), capture_output=True,
                          text=True, timeout=timeout, cwd=home.parent)


def backend(home: Path) -> TrackingBackend:
    """The local stores of ``home``."""
    return open_backend(Settings.for_home(home))


def register_base(home: Path, model_dir: Path, name: str = "tiny") -> str:
    """Log the ``save_pretrained`` folder ``model_dir`` and register it as ``name`` version 1 (in a subprocess, so
    this process's SDK state is left alone); returns ``models:/NAME/1``."""
    code = ("import sys, capstan; info = capstan.log_model(sys.argv[1], 'model', registered_model_name=sys.argv[2]);"
            " print(info.registered_model_version)")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir), name], env=worker_env(home),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return f"models:/{name}/{done.stdout.strip()}"
