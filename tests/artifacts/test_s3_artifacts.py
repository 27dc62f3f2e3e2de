"""The artifact store on S3, through s3fs, against a real S3-compatible server (moto) on a loopback port."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from capstan.artifacts.store import ArtifactStore
from capstan.settings import Settings
from capstan.store.artifact_index_sql import SqlArtifactIndex
from capstan.store.engine import create_store_engine
from helpers.server import free_port

pytest.importorskip("s3fs", reason="s3fs is a test extra: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    if not Path(server).exists():
        pytest.skip("moto_server is not installed (test extra)")
    port = free_port()
    proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url, timeout=0.5)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_s3_roundtrip_with_dedup_and_gc(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("capstan-test")
    settings = Settings.from_env({"CAPSTAN_HOME": str(tmp_path), "CAPSTAN_ARTIFACTS": "s3://capstan-test/prefix",
                                  "CAPSTAN_S3_ENDPOINT": s3_endpoint})
    store = ArtifactStore(settings, SqlArtifactIndex(create_store_engine(settings)))
    first = store.put_stream("1/r1/artifacts/model.bin", [b"abc"] * 1000)
    second = store.put_bytes("1/r2/artifacts/copy.bin", b"abc" * 1000)
    assert first.digest == second.digest
    assert fs.find("capstan-test/prefix/blobs") == [f"capstan-test/prefix/blobs/{first.digest[:2]}/"
                                                    f"{first.digest[2:4]}/{first.digest}"]
    assert store.read_bytes("1/r2/artifacts/copy.bin") == b"abc" * 1000
    store.delete_prefix("1/r1")
    store.delete_prefix("1/r2")
    assert store.collect_garbage().blobs_removed == 1
    assert fs.find("capstan-test/prefix/blobs") == []
