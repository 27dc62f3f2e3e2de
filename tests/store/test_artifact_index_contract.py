"""The artifact-index contract (`capstan.artifacts.ports.ArtifactIndex`), run against every metadata-store backend
(SQLite and PostgreSQL). The index keeps no bytes: these tests record digests for content that exists nowhere."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from capstan.artifacts.ports import ArtifactIndex
from capstan.artifacts.records import ArtifactEntry, GcReport, StoredBlob
from capstan.errors import InvalidParameterValue, ResourceDoesNotExist
from capstan.settings import Settings
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.engine import create_store_engine
from capstan.store.schema import artifact_entries, blobs
from helpers.clock import T0, FakeClock


@dataclass
class Bench:
    index: SqlArtifactIndex
    clock: FakeClock


@pytest.fixture
def bench(backend_settings: Settings) -> Iterator[Bench]:
    engine = create_store_engine(backend_settings)
    clock = FakeClock()
    yield Bench(SqlArtifactIndex(engine, clock=clock), clock)
    engine.dispose()


@pytest.fixture
def index(bench: Bench) -> SqlArtifactIndex:
    return bench.index


def _digest(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()


def _put(index: ArtifactIndex, path: str, content: str) -> ArtifactEntry:
    return index.record(path, _digest(content), len(content))


def _blob_digests(index: SqlArtifactIndex) -> set[str]:
    with index.engine.connect() as conn:
        return set(conn.execute(select(blobs.c.digest)).scalars())


def test_implements_the_protocol(index: SqlArtifactIndex) -> None:
    port: ArtifactIndex = index  # mypy checks the structural match
    assert port is index


# ---------------------------------------------------------------------------------------------- record / stat


def test_record_then_stat_and_exists(index: SqlArtifactIndex) -> None:
    entry = _put(index, "1/r/artifacts/a.txt", "hello")
    assert entry == ArtifactEntry("1/r/artifacts/a.txt", _digest("hello"), 5)
    assert index.stat("1/r/artifacts/a.txt") == entry
    assert index.exists("1/r/artifacts/a.txt")
    assert not index.exists("1/r/artifacts")
    assert not index.exists("1/r/artifacts/b.txt")
    assert index.existing(["1/r/artifacts/a.txt", "1/r/artifacts", "1/r/artifacts/b.txt", "1/r/artifacts/a.txt"]) \
        == {"1/r/artifacts/a.txt"}
    assert index.existing([]) == frozenset()
    with pytest.raises(ResourceDoesNotExist):
        index.stat("1/r/artifacts/b.txt")


def test_record_replaces_the_entry_and_keeps_each_blob_once(index: SqlArtifactIndex) -> None:
    _put(index, "p/f.txt", "one")
    _put(index, "q/f.txt", "one")
    second = _put(index, "p/f.txt", "three")
    assert index.stat("p/f.txt") == second
    assert _blob_digests(index) == {_digest("one"), _digest("three")}


def test_record_stamps_rows_with_the_clock(bench: Bench) -> None:
    bench.clock.now = T0 + 42
    _put(bench.index, "t/f", "x")
    with bench.index.engine.connect() as conn:
        entry_at = conn.execute(select(artifact_entries.c.created_at)).scalar_one()
        blob_at = conn.execute(select(blobs.c.created_at)).scalar_one()
    assert entry_at == blob_at == T0 + 42


def test_a_file_cannot_replace_a_folder_or_sit_below_a_file(index: SqlArtifactIndex) -> None:
    _put(index, "m/dir/inner.txt", "1")
    with pytest.raises(InvalidParameterValue, match="is a folder"):
        _put(index, "m/dir", "2")
    with pytest.raises(InvalidParameterValue, match="is a folder"):
        index.check_file_slot("m")
    with pytest.raises(InvalidParameterValue, match="is a file"):
        _put(index, "m/dir/inner.txt/deeper", "3")
    with pytest.raises(InvalidParameterValue, match="is a file"):
        index.check_file_slot("m/dir/inner.txt/x/y")
    index.check_file_slot("m/dir/inner.txt")  # replacing the file itself is fine
    index.check_file_slot("m/dir2")  # a sibling whose name extends the folder's is not below it
    index.check_file_slot("m/di")
    assert not index.exists("m/dir")
    assert [e.path for e in index.files_below("")] == ["m/dir/inner.txt"]


def test_file_slot_check_uses_byte_order(index: SqlArtifactIndex) -> None:
    # Locale collations ignore punctuation ("a/b/x" would sort after "a/b0"); the folder test is in byte order.
    for path in ("a/b-c", "a/b.c", "a/b0", "a/ba"):
        _put(index, path, path)
    index.check_file_slot("a/b")  # none of those is below "a/b"
    _put(index, "a/b/x", "x")
    with pytest.raises(InvalidParameterValue, match="is a folder"):
        index.check_file_slot("a/b")


# ---------------------------------------------------------------------------------------------- listing


def test_files_below_is_ordered_strict_and_literal(index: SqlArtifactIndex) -> None:
    for path in ("x/b.txt", "x/a/deep.txt", "x", "xy/c.txt", "a_b/1", "aXb/2", "a%b/3"):
        if path != "x":
            _put(index, path, path)
    assert [e.path for e in index.files_below("x")] == ["x/a/deep.txt", "x/b.txt"]
    assert [e.path for e in index.files_below("a_b")] == ["a_b/1"]
    assert [e.path for e in index.files_below("a%b")] == ["a%b/3"]
    assert [e.path for e in index.files_below("")] == sorted(
        ["x/b.txt", "x/a/deep.txt", "xy/c.txt", "a_b/1", "aXb/2", "a%b/3"])
    assert index.files_below("x/b.txt") == []
    assert index.files_below("nothing") == []
    assert index.files_below("x")[1] == ArtifactEntry("x/b.txt", _digest("x/b.txt"), len("x/b.txt"))


# ---------------------------------------------------------------------------------------------- deleting


def test_delete_prefix_forgets_the_path_and_everything_below_only(index: SqlArtifactIndex) -> None:
    for path in ("r/1/f", "r/1/sub/g", "r/10/f", "r/1x", "r_1/f"):
        _put(index, path, path)
    assert index.delete_prefix("r/1") == 2
    assert [e.path for e in index.files_below("")] == ["r/10/f", "r/1x", "r_1/f"]
    assert index.delete_prefix("r/1x") == 1
    assert index.delete_prefix("r/1") == 0
    assert index.delete_prefix("r_1") == 1
    assert [e.path for e in index.files_below("")] == ["r/10/f"]


def test_delete_prefix_keeps_blobs(index: SqlArtifactIndex) -> None:
    _put(index, "d/f", "content")
    index.delete_prefix("d")
    assert _blob_digests(index) == {_digest("content")}


# ---------------------------------------------------------------------------------------------- garbage


def test_unreferenced_blobs_and_forget_blob(index: SqlArtifactIndex) -> None:
    _put(index, "keep/f", "shared")
    _put(index, "drop/f", "shared")
    _put(index, "drop/g", "only-here")
    assert index.unreferenced_blobs() == []
    index.delete_prefix("drop")
    assert index.unreferenced_blobs() == [StoredBlob(_digest("only-here"), len("only-here"))]
    assert index.forget_blob(_digest("only-here"))
    assert index.unreferenced_blobs() == []
    assert _blob_digests(index) == {_digest("shared")}
    assert not index.forget_blob(_digest("only-here"))  # already gone


def test_forget_blob_refuses_a_blob_that_is_referenced_again(index: SqlArtifactIndex) -> None:
    _put(index, "a/f", "reused")
    index.delete_prefix("a")
    [orphan] = index.unreferenced_blobs()
    _put(index, "b/f", "reused")  # an upload re-uses the content between the listing and the removal
    assert not index.forget_blob(orphan.digest)
    assert _blob_digests(index) == {_digest("reused")}
    assert index.stat("b/f").digest == orphan.digest


def test_preview_orphans_counts_without_changing_anything(index: SqlArtifactIndex) -> None:
    _put(index, "keep/f", "shared")
    _put(index, "run_1/f", "shared")
    _put(index, "run_1/g", "one")
    _put(index, "run_1/sub/h", "three")
    _put(index, "runX1/f", "kept-by-literal-match")
    _put(index, "old/f", "gone")
    index.delete_prefix("old")
    assert index.preview_orphans([]) == GcReport(1, len("gone"))
    assert index.preview_orphans(["run_1"]) == GcReport(3, len("gone") + len("one") + len("three"))
    assert index.preview_orphans(["run_1", "keep"]) == GcReport(
        4, len("gone") + len("one") + len("three") + len("shared"))
    assert index.preview_orphans(["run_1/g"]) == GcReport(2, len("gone") + len("one"))
    assert index.preview_orphans(["missing"]) == GcReport(1, len("gone"))
    assert len(index.files_below("")) == 5
    assert len(_blob_digests(index)) == 5


def test_preview_orphans_of_an_empty_index(index: SqlArtifactIndex) -> None:
    assert index.preview_orphans([]) == GcReport(0, 0)
    assert index.preview_orphans(["a", "b"]) == GcReport(0, 0)
