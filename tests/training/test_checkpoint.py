"""`capstan.checkpoint` against the local stores and a real server: save and load the latest, the last K kept, a
checkpoint whose bytes are not the ones the manifest lists is never returned, rank gating, per-rank series, torch
state dicts, and bad input."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

import capstan
import capstan.checkpoint as ckpt
from capstan.errors import InvalidParameterValue, InvalidState
from capstan.sdk import fluent as sdk
from capstan.sdk.backends import ArtifactOwner
from capstan.settings import Settings


def _files(run_id: str, path: str) -> list[str]:
    return sorted(f.path for f in sdk.process_backend().list_artifacts(ArtifactOwner.run(run_id), path,
                                                                        recursive=True))


def test_save_and_load_the_latest_keeping_the_last_k(fluent: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # torch.save is used only when the process already imported torch (an earlier test may have): not here
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert ckpt.load_latest() is None and ckpt.list_checkpoints() == []  # no active run: nothing to load
    with capstan.start_run() as run:
        assert ckpt.load_latest() is None
        for step in range(4):
            assert ckpt.save({"step": step, "weights": [step] * 3}, step, keep=2)
        assert ckpt.load_latest() == ({"step": 3, "weights": [3, 3, 3]}, 3)
        assert [(c.step, c.format) for c in ckpt.list_checkpoints()] == [(3, "pickle"), (2, "pickle")]
        assert _files(run.run_id, "checkpoints") == ["checkpoints/manifest.json", "checkpoints/slot-0.ckpt",
                                                     "checkpoints/slot-1.ckpt"]
        ckpt.save({"again": True}, 2, keep=2)  # saving a step again replaces its checkpoint
        assert [c.step for c in ckpt.list_checkpoints()] == [2, 3]
        assert ckpt.load_latest() == ({"again": True}, 2)


def test_a_checkpoint_whose_bytes_do_not_match_is_never_returned(fluent: Settings, tmp_path: Path) -> None:
    with capstan.start_run() as run:
        ckpt.save("first", 0)
        ckpt.save("second", 1)
        newest = ckpt.list_checkpoints()[0]
        # A slot being rewritten (or cut short) holds other bytes than the manifest lists: skipped.
        partial = tmp_path / "partial"
        partial.write_bytes(b"\x80\x05 cut short")
        sdk.process_backend().upload_artifact(ArtifactOwner.run(run.run_id), f"checkpoints/slot-{newest.slot}.ckpt",
                                              partial)
        assert ckpt.load_latest() == ("first", 0)
        (tmp_path / "manifest.json").write_text("{not json")
        sdk.process_backend().upload_artifact(ArtifactOwner.run(run.run_id), "checkpoints/manifest.json",
                                              tmp_path / "manifest.json")
        with pytest.raises(InvalidState, match=r"the checkpoint manifest checkpoints/manifest\.json of run "):
            ckpt.load_latest()


def test_only_rank_zero_writes_unless_per_rank(fluent: Settings) -> None:
    with capstan.start_run() as run:
        ckpt.save({"shared": 0}, 5)
    sdk.configure(dataclasses.replace(fluent, rank=1, checkpoint_uri=f"runs:/{run.run_id}/checkpoints"))
    assert ckpt.save({"shared": 1}, 6) is False  # rank 1 does not write the shared series
    assert ckpt.load_latest() == ({"shared": 0}, 5)  # every rank loads it
    assert ckpt.save({"mine": 1}, 6, per_rank=True) is True
    assert ckpt.load_latest(per_rank=True) == ({"mine": 1}, 6)
    assert "checkpoints/rank-1/slot-0.ckpt" in _files(run.run_id, "checkpoints")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (test extra)")
def test_torch_state_dicts_use_torch_save(fluent: Settings) -> None:
    import torch

    model = torch.nn.Linear(3, 2)
    with capstan.start_run():
        ckpt.save({"model": model.state_dict(), "epoch": 1}, 10)
        [entry] = ckpt.list_checkpoints()
        found = ckpt.load_latest(map_location="cpu")
    assert entry.format == "torch" and found is not None and found[1] == 10
    state, _step = found
    assert state["epoch"] == 1 and torch.equal(state["model"]["weight"], model.state_dict()["weight"])


def test_bad_input(fluent: Settings) -> None:
    with capstan.start_run():
        with pytest.raises(InvalidParameterValue, match=r"^step: -1 must be a whole number >= 0$"):
            ckpt.save({}, -1)
        with pytest.raises(InvalidParameterValue, match=r"^keep: 0 must be a whole number >= 1$"):
            ckpt.save({}, 0, keep=0)
    sdk.configure(dataclasses.replace(fluent, checkpoint_uri="s3://bucket/x"))
    with pytest.raises(InvalidParameterValue, match=r"^CAPSTAN_CHECKPOINT_URI: 's3://bucket/x' is not runs:/"):
        ckpt.load_latest()
