"""A pipeline's source code as a content-addressed package in the artifact store.

A pod on a cluster runs a Python step with ``capstan worker run-step`` in the step's image, which need not contain
the user's code: the code travels as a package. `build_package` makes a *deterministic* gzipped tar of a source
folder (the pipeline file's folder): entries sorted by path, modification times, owners and permission bits fixed,
so the same files always give the same bytes and the same sha256. `upload_package` stores it at
``code/<sha256>.tar.gz``; `fetch_package` downloads it again, checks the digest and unpacks it safely (no absolute
paths, no ``..``, regular files only). A package is referred to as ``sha256:<hex>`` (`CodePackage.ref`).

What a package holds: every regular file below the folder except hidden files and folders (``.git``, ``.venv``)
and ``__pycache__``, ``node_modules``, ``*.pyc``; symbolic links are left out. It is limited to `MAX_PACKAGE_BYTES`
of files: data belongs in the artifact store or a volume, not in the code package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from capstan.errors import InvalidParameterValue, ResourceDoesNotExist

if TYPE_CHECKING:
    from capstan.artifacts.store import ArtifactStore

MAX_PACKAGE_BYTES: Final = 64 * 2**20
"""Largest total size of the files in one package."""
PACKAGE_PREFIX: Final = "code"
"""Artifact-store folder of code packages."""
_SKIP_DIRS: Final = frozenset({"__pycache__", "node_modules"})
_REF: Final = re.compile(r"^sha256:([0-9a-f]{64})$")


@dataclass(frozen=True, slots=True)
class CodePackage:
    """A stored package: its sha256 (of the archive bytes), archive size and number of files."""

    digest: str
    size: int
    files: int

    @property
    def ref(self) -> str:
        """``sha256:<hex>``, what ``capstan worker run-step --code`` takes."""
        return f"sha256:{self.digest}"

    @property
    def path(self) -> str:
        """Where the archive is in the artifact store."""
        return package_path(self.digest)


def package_path(digest: str) -> str:
    """Artifact-store path of the package with this sha256."""
    return f"{PACKAGE_PREFIX}/{digest}.tar.gz"


def parse_ref(ref: str) -> str:
    """The hex digest of a ``sha256:<hex>`` reference; `InvalidParameterValue` for anything else."""
    match = _REF.match(ref.strip())
    if match is None:
        raise InvalidParameterValue(f"--code: {ref!r} is not a code package reference (sha256:<64 hex digits>)")
    return match.group(1)


def package_files(root: Path) -> list[Path]:
    """The files a package of ``root`` holds, sorted by their relative path."""
    if not root.is_dir():
        raise InvalidParameterValue(f"code package: {str(root)!r} is not a folder")
    out: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS
                         and not os.path.islink(os.path.join(folder, d)))
        for name in files:
            path = Path(folder, name)
            if name.startswith(".") or name.endswith(".pyc") or path.is_symlink() or not path.is_file():
                continue
            out.append(path)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def build_package(root: Path) -> tuple[bytes, int]:
    """(archive bytes, file count) of the deterministic package of ``root``. Raises `InvalidParameterValue` when
    the files exceed `MAX_PACKAGE_BYTES`."""
    files = package_files(root)
    total = sum(f.stat().st_size for f in files)
    if total > MAX_PACKAGE_BYTES:
        raise InvalidParameterValue(
            f"code package: {root} holds {total} bytes of files, more than {MAX_PACKAGE_BYTES}; keep data out of "
            "the pipeline's folder (use the artifact store or a volume)")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file in files:
            info = tarfile.TarInfo(file.relative_to(root).as_posix())
            data = file.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if file.stat().st_mode & 0o111 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(raw.getvalue())
    return out.getvalue(), len(files)


def upload_package(store: ArtifactStore, root: Path) -> CodePackage:
    """Build the package of ``root`` and store it under its digest (storing the same code twice is one blob)."""
    data, count = build_package(root)
    digest = hashlib.sha256(data).hexdigest()
    path = package_path(digest)
    if not store.exists(path):
        store.put_bytes(path, data)
    return CodePackage(digest, len(data), count)


def fetch_package(store: ArtifactStore, ref: str, dest: Path) -> Path:
    """Download the package ``ref`` (``sha256:<hex>``), check its digest and unpack it into ``dest/<hex>``;
    returns that folder. Raises `ResourceDoesNotExist` when the store has no such package and
    `InvalidParameterValue` when the bytes do not match the digest or the archive holds an unsafe entry."""
    digest = parse_ref(ref)
    path = package_path(digest)
    if not store.exists(path):
        raise ResourceDoesNotExist(f"code package {ref} is not in the artifact store ({path})")
    data = store.read_bytes(path)
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidParameterValue(f"code package {ref}: the stored bytes do not match the digest")
    target = dest / digest
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            _extract(tar, member, target, ref)
    return target


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, ref: str) -> None:
    name = member.name
    parts = Path(name).parts
    if not member.isfile() or name.startswith("/") or ".." in parts or not parts:
        raise InvalidParameterValue(f"code package {ref}: unsafe entry {name!r}")
    out = target.joinpath(*parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    out.write_bytes(source.read())
    out.chmod(member.mode & 0o755)


def package_ref_for(target: str, root: Path) -> str:
    """A pipeline reference ``FILE[:FUNC]`` rewritten relative to the package folder ``root`` (what the worker
    resolves inside the unpacked package). Raises `InvalidParameterValue` when the file is outside ``root``."""
    file, sep, func = target.rpartition(":")
    if not sep or (len(file) == 1 and file.isalpha()):
        file, func = target, ""
    resolved = Path(file).resolve()
    try:
        relative = resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise InvalidParameterValue(f"code package: {file!r} is not inside {str(root)!r}") from None
    return f"{relative}:{func}" if func else relative


def ship_pipeline(store: ArtifactStore, canonical: str) -> tuple[str, str]:
    """Upload the package of a pipeline's folder, at render or submit time. ``canonical`` is the reference
    `capstan.pipelines.loader.load_pipeline` returns (``/abs/file.py:func``); the result is (package reference,
    the pipeline's reference inside the package), the ``--code`` and ``--pipeline`` of ``capstan worker run-step``.
    Raises `InvalidParameterValue` for a pipeline imported as a module rather than from a file."""
    file, _, _func = canonical.rpartition(":")
    if not file.endswith(".py") or not Path(file).is_file():
        raise InvalidParameterValue(f"code package: {canonical!r} is not a pipeline file; shipping code needs "
                                    "FILE.py[:FUNC]")
    root = Path(file).parent
    package = upload_package(store, root)
    return package.ref, package_ref_for(canonical, root)
