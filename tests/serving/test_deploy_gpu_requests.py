"""Replicas ask the admission for what their spec names, fractional GPUs included; a request that can never fit is
refused when the deployment is applied, with the admission's reason."""

from __future__ import annotations

import pytest

from capstan.errors import InvalidParameterValue
from capstan.resources.local import LocalAdmission
from capstan.resources.machine import Capacity
from capstan.serving.controller import resource_request
from capstan.serving.ports import DeploymentRecord
from capstan.serving.spec import parse_spec


def _record(resources: dict[str, object]) -> DeploymentRecord:
    spec = parse_spec({"name": "gpu", "model": "models:/m/1", "resources": resources})
    return DeploymentRecord("gpu", "p", spec, 1, (("primary", "models:/m/1"),), 1, 0, 0)


def test_a_fractional_gpu_replica_gets_a_share_of_one_device() -> None:
    request = resource_request(_record({"gpus": 0.5, "cpu": "1"}), "r1")
    assert request.gpu == 0.5 and request.cpu == 1.0
    admission = LocalAdmission(Capacity(cpu=4, memory=8 << 30, gpus=(("0", "h100"),)))
    first, second = admission.acquire_many([request, resource_request(_record({"gpus": 0.5, "cpu": "1"}), "r2")])
    assert first.devices == second.devices == ("0",)  # two half-GPU replicas share device 0


def test_more_gpus_than_the_machine_has_can_never_fit() -> None:
    admission = LocalAdmission(Capacity(cpu=4, memory=8 << 30, gpus=(("0", "h100"),)))
    why = admission.check(resource_request(_record({"gpus": 2}), "r1"))
    assert why is not None and "GPU" in why
    with pytest.raises(InvalidParameterValue, match="fraction below one"):
        _record({"gpus": 1.5})
