"""Content-addressed artifact store: dedup, streaming, limits, path safety, listing, gc — on both backends."""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import func, select

from capstan.artifacts.paths import join, normalize_path
from capstan.artifacts.store import ArtifactStore
from capstan.errors import ArtifactTooLarge, InvalidParameterValue, ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.engine import create_store_engine
from capstan.store.schema import blobs


def _open(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings, SqlArtifactIndex(create_store_engine(settings)))


@pytest.fixture
def store(backend_settings: Settings) -> ArtifactStore:
    return _open(backend_settings)


def _blob_count(store: ArtifactStore) -> int:
    assert isinstance(store.index, SqlArtifactIndex)
    with store.index.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(blobs)).scalar_one())


def test_identical_content_is_stored_once(store: ArtifactStore) -> None:
    a = store.put_bytes("1/run-a/artifacts/data.csv", b"x,y\n1,2\n")
    b = store.put_bytes("1/run-b/artifacts/copy.csv", b"x,y\n1,2\n")
    assert a.digest == b.digest
    assert _blob_count(store) == 1
    assert store.read_bytes("1/run-b/artifacts/copy.csv") == b"x,y\n1,2\n"


def test_overwrite_replaces_entry(store: ArtifactStore) -> None:
    store.put_bytes("p/f.txt", b"one")
    store.put_bytes("p/f.txt", b"two")
    assert store.read_bytes("p/f.txt") == b"two"
    assert store.stat("p/f.txt").size == 3


@pytest.mark.parametrize("bad", ["../etc/passwd", "/abs/path", "a/../../b", "a\x00b", "C:/x", ""])
def test_unsafe_paths_are_rejected(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(InvalidParameterValue):
        store.put_bytes(bad, b"x")


def test_normalize_path() -> None:
    assert normalize_path("a//b/./c") == "a/b/c"
    assert normalize_path("a\\b") == "a/b"
    assert join("1/r/artifacts", "") == "1/r/artifacts"
    assert join("1/r/artifacts", "sub/f") == "1/r/artifacts/sub/f"


def test_size_limit_is_enforced_and_nothing_half_written(backend_settings: Settings) -> None:
    settings = replace(backend_settings, artifact_max_bytes=10)
    store = _open(settings)
    with pytest.raises(ArtifactTooLarge):
        store.put_stream("big.bin", [b"12345", b"67890", b"x"])
    assert not store.exists("big.bin")
    assert _blob_count(store) == 0
    assert list(Path(store.root, "tmp").iterdir()) == []


def test_streaming_upload_and_download_keep_memory_flat(store: ArtifactStore, tmp_path: Path) -> None:
    chunk = b"z" * (1024 * 1024)
    tracemalloc.start()
    store.put_stream("big/blob.bin", (chunk for _ in range(32)))
    total = sum(len(c) for c in store.iter_bytes("big/blob.bin"))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 32 * len(chunk)
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes: upload/download is not streaming"


def test_listing_and_download(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("bb")
    store.put_dir("7/r/artifacts/model", src)
    top = store.list("7/r/artifacts")
    assert [(i.path, i.is_dir) for i in top] == [("7/r/artifacts/model", True)]
    inner = store.list("7/r/artifacts/model")
    assert [(i.path, i.is_dir, i.size) for i in inner] == [
        ("7/r/artifacts/model/a.txt", False, 1), ("7/r/artifacts/model/sub", True, None)]
    out = store.download("7/r/artifacts/model", tmp_path / "out")
    assert (out / "sub" / "b.txt").read_text() == "bb"
    single = store.download("7/r/artifacts/model/a.txt", tmp_path / "one")
    assert single.read_text() == "a"
    with pytest.raises(ResourceDoesNotExist):
        store.download("7/r/artifacts/missing", tmp_path / "none")


def test_like_wildcards_in_prefix_are_literal(store: ArtifactStore) -> None:
    store.put_bytes("a_b/x.txt", b"1")
    store.put_bytes("aXb/y.txt", b"2")
    assert [i.path for i in store.list("a_b")] == ["a_b/x.txt"]


def test_gc_removes_only_unreferenced_blobs(store: ArtifactStore) -> None:
    store.put_bytes("keep/f", b"shared")
    store.put_bytes("drop/f", b"shared")
    store.put_bytes("drop/g", b"only-here")
    assert store.delete_prefix("drop") == 2
    report = store.collect_garbage()
    assert report.blobs_removed == 1 and report.bytes_freed == len(b"only-here")
    assert store.read_bytes("keep/f") == b"shared"
    assert _blob_count(store) == 1
