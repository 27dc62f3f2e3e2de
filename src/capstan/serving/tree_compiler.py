"""Compile a scikit-learn tree ensemble in a short-lived child process, so the serving process stays small.

Unpickling a forest imports scikit-learn (and SciPy), which stays in the process for good: a replica that compiled
its model itself would keep ~150 MiB it never uses again. Instead, the first load of a model file runs
``python -m capstan.serving.tree_compiler`` once; the child unpickles the model under the same trust rules, compiles
it (`capstan.serving.served_trees.compile_trees`) and writes the ``.npz`` cache entry, and the serving process reads
that entry without importing scikit-learn. Exit status: 0 the entry is written, 3 the model is not a tree ensemble
(the caller loads it itself and remembers that with a ``.plain`` marker beside the entry), anything else a failure
(the caller loads it itself, which raises the real error).

Only files that can hold a tree ensemble go to the child: a pickle that names ``sklearn.tree`` (every forest's trees
are ``sklearn.tree._tree.Tree`` objects), or a skops file whose schema does.
"""

from __future__ import annotations

import json
import logging
import mmap
import subprocess
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["NOT_TREES", "compile_in_child", "main", "may_hold_trees", "plain_marker"]

NOT_TREES = 3
"""The child's exit status for a model that is not a tree ensemble."""
_TREE_MODULE = b"sklearn.tree"
_CHILD_TIMEOUT_S = 600.0
_log = logging.getLogger(__name__)


def may_hold_trees(file: Path, fmt: str) -> bool:
    """Whether ``file`` (of sklearn flavor format ``fmt``) may hold a tree ensemble: it names ``sklearn.tree``."""
    try:
        if fmt == "skops":
            with zipfile.ZipFile(file) as archive:
                return _TREE_MODULE in archive.read("schema.json")
        with file.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return view.find(_TREE_MODULE) >= 0
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return False


def plain_marker(entry: Path) -> Path:
    """The marker beside cache ``entry`` saying its model is not a tree ensemble (so no child is started again)."""
    return entry.with_suffix(".plain")


def compile_in_child(folder: Path, conf: Mapping[str, Any], entry: Path, *, trusted: bool) -> int:
    """Compile the sklearn model in ``folder`` into cache ``entry`` in a child process; its exit status (see the
    module docs). A child that cannot start or run counts as a failure (-1)."""
    command = [sys.executable, "-m", "capstan.serving.tree_compiler", str(folder), str(entry), json.dumps(conf)]
    if trusted:
        command.append("--trusted")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=_CHILD_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        _log.warning("could not compile the model in a child process (%s); loading it here", exc)
        return -1
    if done.returncode not in (0, NOT_TREES):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        _log.warning("compiling the model in a child process failed (%s); loading it here", last)
    return done.returncode


def main(argv: list[str]) -> int:
    """The child: ``FOLDER ENTRY CONF_JSON [--trusted]``."""
    from capstan.models import sklearn as sklearn_flavor
    from capstan.serving.served_trees import compile_trees

    folder, entry, conf = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    estimator = sklearn_flavor.load(folder, conf, trust_recorded_types="--trusted" in argv[3:])
    trees = compile_trees(estimator)
    if trees is None:
        return NOT_TREES
    entry.parent.mkdir(parents=True, exist_ok=True)
    trees.save(entry)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
