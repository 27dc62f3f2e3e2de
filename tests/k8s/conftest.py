"""Fixtures shared by the Kubernetes tests: the CRDs the manifests are validated against.

They live outside the repository, in ``../shared/k8s/crds`` beside the checkout (Kueue, Argo Workflows, Kubeflow
Training Operator and Trainer, KServe, KubeRay); tests that need them skip, saying so, where that folder is absent.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from emulator import Cluster, open_cluster

REPO_ROOT = Path(__file__).resolve().parents[2]
CRDS_DIR = REPO_ROOT.parent / "shared" / "k8s" / "crds"


@pytest.fixture(scope="session")
def k8s_crds_dir() -> Path:
    """The folder of CRD YAML files (``../shared/k8s/crds`` from the repository root)."""
    if not CRDS_DIR.is_dir():
        pytest.skip(f"the CRDs are not there: {CRDS_DIR} is missing (the shared folder beside the checkout)")
    return CRDS_DIR


@pytest.fixture(params=["emulator", "real-cluster"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    """The in-memory API emulator, or the real cluster of CAPSTAN_TEST_KUBECONFIG (skipped, saying so, without it):
    the executor and apply tests run against both."""
    yield from open_cluster(request.param, tmp_path)
