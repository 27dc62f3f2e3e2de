"""The deployment spec (capstan.serving.spec): valid specs round-trip, every invalid field is named by its path."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from capstan.errors import InvalidParameterValue
from capstan.serving.spec import (
    Autoscaling,
    DeploymentSpec,
    ModelUri,
    load_spec_yaml,
    parse_model_uri,
    parse_spec,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serving" / "deployment.yaml"
RUN_ID = "4f2a9c0d1e8b4a7f9c3d2b1a0e9f8d7c"


def _full() -> dict[str, Any]:
    return {
        "name": "fraud-scorer",
        "model": "models:/fraud@champion",
        "autoscaling": {"min_replicas": 0, "max_replicas": 8, "target_concurrency": 4,
                        "stabilization_window_seconds": 120},
        "canary": {"model": "models:/fraud/7", "traffic": 10},
        "shadow": {"model": f"runs:/{RUN_ID}/model", "traffic": 5},
        "resources": {"cpu": "500m", "memory": "2Gi", "gpus": 1, "queue": "serving"},
        "batching": {"max_batch_size": 32, "max_delay_ms": 5},
        "payload_logging": {"sample_rate": 0.1},
        "drift": {"window": 500},
    }


def _with(**changes: Any) -> dict[str, Any]:
    """The full spec with top-level keys replaced (None removes the key)."""
    data = _full()
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def _nested(section: str, **changes: Any) -> dict[str, Any]:
    data = _full()
    data[section] = {**data[section], **changes}
    return data


def test_full_spec_parses_to_typed_record() -> None:
    spec = parse_spec(_full())
    assert spec.name == "fraud-scorer"
    assert spec.model == ModelUri("models:/fraud@champion", "alias", name="fraud", alias="champion")
    assert spec.replicas is None
    assert spec.autoscaling == Autoscaling(0, 8, 4.0, None, 120)
    assert spec.autoscaling.scales_to_zero
    assert spec.canary is not None and spec.canary.model.version == 7 and spec.canary.traffic == 10
    assert spec.shadow is not None and spec.shadow.model.run_id == RUN_ID and spec.shadow.model.path == "model"
    assert spec.resources.cpu_milli == 500
    assert spec.resources.memory_milli == 2 * 2**30 * 1000
    assert spec.resources.kubernetes_requests() == {"cpu": "500m", "memory": "2Gi", "nvidia.com/gpu": "1"}
    assert spec.batching is not None and spec.batching.max_batch_size == 32
    assert spec.payload_sample_rate == 0.1
    assert spec.drift_window == 500
    assert parse_spec({"name": "a", "model": "models:/m/1"}).drift_window == 1000
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "other"  # type: ignore[misc]


@pytest.mark.parametrize("data", [
    _full(),
    {"name": "a", "model": "models:/m/1"},
    {"name": "a", "model": "models:/m/1", "replicas": 3, "resources": {"cpu": 2, "memory": "1500M"}},
    {"name": "a", "model": "models:/m/1", "resources": {"memory": "100m"}},  # 0.1 byte: Kubernetes allows it
    {"name": "a-b-9", "model": f"runs:/{RUN_ID}/dir/sub/model",
     "autoscaling": {"max_replicas": 2, "target_rps": 12.5}},
    _nested("canary", traffic=0),
    _nested("canary", traffic=100),
    _nested("shadow", traffic=0.5),
])
def test_valid_specs_round_trip(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    again = parse_spec(spec.to_dict())
    assert again == spec
    assert again.to_dict() == spec.to_dict()
    assert load_spec_yaml(yaml.safe_dump(spec.to_dict())) == spec


def test_defaults_are_explicit_in_to_dict() -> None:
    spec = parse_spec({"name": "a", "model": "models:/m@prod"})
    assert spec.replicas == 1 and spec.autoscaling is None
    assert spec.to_dict() == {"name": "a", "model": "models:/m@prod", "replicas": 1}
    scaled = parse_spec({"name": "a", "model": "models:/m@prod",
                         "autoscaling": {"max_replicas": 3, "target_concurrency": 1}})
    assert scaled.to_dict()["autoscaling"] == {"min_replicas": 1, "max_replicas": 3, "target_concurrency": 1.0,
                                               "stabilization_window_seconds": 300}


def test_memory_renders_exactly() -> None:
    for text, rendered in (("2Gi", "2Gi"), ("1500M", "1500000000"), ("1536Mi", "1536Mi"), ("1k", "1000"),
                           ("0.5Ki", "512"), ("1.5", "1500m")):
        spec = parse_spec({"name": "a", "model": "models:/m/1", "resources": {"memory": text}})
        assert spec.resources.memory == rendered, text


@pytest.mark.parametrize("uri", [
    "models:/fraud@champion", "models:/fraud-v2@prod_1", "models:/my.model/12", f"runs:/{RUN_ID}/model",
    "runs:/abc/a/b/c.pkl",
])
def test_model_uri_shapes_accepted(uri: str) -> None:
    assert parse_model_uri(uri).uri == uri


@pytest.mark.parametrize("uri", [
    "models:/fraud", "models:/fraud/Production", "models:/fraud/latest", "models:/fraud/0", "models:/fraud/-1",
    "models:/fraud@", "models:/@champion", "models:/fraud@cham pion", "models:/a/b/1", "models:/fraud/1/extra",
    "models://fraud/1", "runs:/abc", "runs:/abc/", "runs:/abc/../secret", "runs:/abc//model", "runs://abc/m",
    "runs:/abc/./m", "s3://bucket/model", "", "fraud", "models:/fra\x00ud/1", "models:/fraud/1 ",
])
def test_model_uri_bad_shapes_refused(uri: str) -> None:
    with pytest.raises(InvalidParameterValue, match=r"^spec\.model: "):
        parse_spec({"name": "a", "model": uri})


@pytest.mark.parametrize(("data", "message"), [
    # top level
    ({"name": "a", "model": "models:/m/1", "replicaz": 2, "zz": 1}, r"^spec: unknown fields 'replicaz', 'zz'"),
    ({"model": "models:/m/1"}, r"^spec\.name: is required"),
    ({"name": "a"}, r"^spec\.model: is required"),
    (_with(name="Fraud"), r"^spec\.name: 'Fraud' is not a DNS-1123 label"),
    (_with(name="-a"), r"^spec\.name: "),
    (_with(name="a-"), r"^spec\.name: "),
    (_with(name="a_b"), r"^spec\.name: "),
    (_with(name="a" * 64), r"^spec\.name: "),
    (_with(name=5), r"^spec\.name: expected a string, got int"),
    (_with(model=3), r"^spec\.model: expected a model URI"),
    (_with(replicas=2), r"^spec\.replicas: set either replicas or autoscaling, not both"),
    (_with(autoscaling=None, replicas=0), r"^spec\.replicas: must be at least 1, got 0"),
    (_with(autoscaling=None, replicas=True), r"^spec\.replicas: expected an integer, got True"),
    (_with(autoscaling=None, replicas="2"), r"^spec\.replicas: expected an integer, got '2'"),
    # autoscaling
    (_with(autoscaling=[1]), r"^spec\.autoscaling: expected a mapping, got list"),
    (_nested("autoscaling", min_replicas=-1), r"^spec\.autoscaling\.min_replicas: must be at least 0, got -1"),
    (_nested("autoscaling", min_replicas=9), r"^spec\.autoscaling\.max_replicas: must be at least min_replicas"),
    (_nested("autoscaling", max_replicas=0), r"^spec\.autoscaling\.max_replicas: must be at least 1, got 0"),
    (_nested("autoscaling", max_replicas=2.5), r"^spec\.autoscaling\.max_replicas: expected an integer"),
    (_nested("autoscaling", target_rps=10), r"^spec\.autoscaling: set exactly one of target_concurrency and "),
    (_nested("autoscaling", target_concurrency=None), r"^spec\.autoscaling: set exactly one of "),
    (_nested("autoscaling", target_concurrency=0), r"^spec\.autoscaling\.target_concurrency: must be greater "),
    (_nested("autoscaling", target_concurrency=float("nan")), r"^spec\.autoscaling\.target_concurrency: expected "
                                                              r"a finite number"),
    (_nested("autoscaling", target_concurrency=None, target_rps=-3), r"^spec\.autoscaling\.target_rps: must be "),
    (_nested("autoscaling", stabilization_window_seconds=3601),
     r"^spec\.autoscaling\.stabilization_window_seconds: must be between 0 and 3600, got 3601"),
    (_nested("autoscaling", stabilisation_window_seconds=60), r"^spec\.autoscaling: unknown field "
                                                             r"'stabilisation_window_seconds' \(allowed: "),
    # canary and shadow
    (_nested("canary", traffic=120), r"^spec\.canary\.traffic: must be between 0 and 100, got 120$"),
    (_nested("canary", traffic=-1), r"^spec\.canary\.traffic: must be between 0 and 100, got -1$"),
    (_nested("canary", traffic="10%"), r"^spec\.canary\.traffic: expected a number, got '10%'"),
    (_nested("canary", traffic=None), r"^spec\.canary\.traffic: is required"),
    (_nested("canary", model="models:/fraud/latest"), r"^spec\.canary\.model: 'models:/fraud/latest' is not a "),
    (_nested("canary", model="models:/fraud@champion"), r"^spec\.canary\.model: is the primary model"),
    (_nested("canary", weight=3), r"^spec\.canary: unknown field 'weight' \(allowed: model, traffic\)"),
    (_with(canary="models:/fraud/7"), r"^spec\.canary: expected a mapping, got str"),
    (_nested("shadow", traffic=101), r"^spec\.shadow\.traffic: must be between 0 and 100, got 101$"),
    (_nested("shadow", model=None), r"^spec\.shadow\.model: is required"),
    # resources
    (_nested("resources", cpu="lots"), r"^spec\.resources\.cpu: 'lots' is not a quantity"),
    (_nested("resources", cpu="-1"), r"^spec\.resources\.cpu: quantity '-1' must not be negative"),
    (_nested("resources", cpu=0), r"^spec\.resources\.cpu: must be greater than 0"),
    (_nested("resources", memory="2GB"), r"^spec\.resources\.memory: '2GB' is not a quantity"),
    (_nested("resources", memory="0"), r"^spec\.resources\.memory: must be greater than 0"),
    (_nested("resources", gpus=1.5), r"^spec\.resources\.gpus: must be a whole number of GPUs, or a fraction"),
    (_nested("resources", gpus="x"), r"^spec\.resources\.gpus: 'x' is not a quantity"),
    (_nested("resources", queue=""), r"^spec\.resources\.queue: expected a non-empty queue name"),
    (_nested("resources", queue="a\u202eb"), r"^spec\.resources\.queue: .* contains the character U\+202E"),
    (_nested("resources", tpu=1), r"^spec\.resources: unknown field 'tpu' \(allowed: cpu, gpus, memory, queue\)"),
    # batching and payload logging
    (_nested("batching", max_batch_size=0), r"^spec\.batching\.max_batch_size: must be at least 1, got 0"),
    (_nested("batching", max_delay_ms=-1), r"^spec\.batching\.max_delay_ms: must be between 0 and 60000, got -1"),
    (_nested("batching", max_delay_ms=None), r"^spec\.batching\.max_delay_ms: is required"),
    (_nested("batching", timeout=1), r"^spec\.batching: unknown field 'timeout'"),
    (_nested("payload_logging", sample_rate=1.5), r"^spec\.payload_logging\.sample_rate: must be between 0 and 1, "
                                                  r"got 1\.5"),
    (_nested("payload_logging", sample_rate=False), r"^spec\.payload_logging\.sample_rate: expected a number"),
    (_nested("payload_logging", sink="s3"), r"^spec\.payload_logging: unknown field 'sink'"),
])
def test_invalid_field_is_named_by_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        parse_spec(data)


def test_spec_must_be_a_mapping() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^spec: expected a mapping, got list"):
        parse_spec([])  # type: ignore[arg-type]
    with pytest.raises(InvalidParameterValue, match=r"^spec: expected a mapping, got NoneType"):
        load_spec_yaml("")


def test_record_refuses_both_or_neither_scaling() -> None:
    model = parse_model_uri("models:/m/1")
    with pytest.raises(InvalidParameterValue, match="exactly one of replicas and autoscaling"):
        DeploymentSpec("a", model, replicas=None)
    with pytest.raises(InvalidParameterValue, match="exactly one of replicas and autoscaling"):
        DeploymentSpec("a", model, replicas=2, autoscaling=Autoscaling(0, 1, 1.0))


def test_yaml_errors_name_line_and_column() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^dep\.yaml:2:9: invalid YAML: mapping values are not allowed"):
        load_spec_yaml("name: a\nmodel: x: y\n", source="dep.yaml")


def test_yaml_duplicate_keys_refused() -> None:
    text = "name: a\nmodel: models:/m/1\ncanary:\n  model: models:/m/2\n  traffic: 10\n  traffic: 100\n"
    with pytest.raises(InvalidParameterValue, match=r"^deployment:6:3: duplicate key 'traffic'"):
        load_spec_yaml(text)


def test_yaml_path_errors_pass_through() -> None:
    with pytest.raises(InvalidParameterValue, match=r"^spec\.canary\.traffic: must be between 0 and 100, got 120$"):
        load_spec_yaml("name: a\nmodel: models:/m/1\ncanary: {model: models:/m/2, traffic: 120}\n")


def test_example_deployment_loads() -> None:
    spec = load_spec_yaml(EXAMPLE.read_text(encoding="utf-8"), source=str(EXAMPLE))
    assert spec.name == "fraud-scorer"
    assert spec.autoscaling is not None and spec.autoscaling.scales_to_zero
    assert spec.canary is not None and spec.canary.traffic == 10
    assert spec.shadow is not None and spec.shadow.model.kind == "run"
    assert spec.resources.gpus == 1 and spec.resources.queue == "serving"
    assert parse_spec(spec.to_dict()) == spec


def test_a_fractional_gpu_is_a_share_of_one_device() -> None:
    spec = parse_spec({"name": "frac", "model": "models:/m/1", "resources": {"gpus": 0.25}})
    assert spec.resources.gpus == 0.25 and spec.resources.shares_a_gpu
    assert spec.resources.kubernetes_requests() == {"nvidia.com/gpu.shared": "1"}
    assert parse_spec(spec.to_dict()) == spec
    whole = parse_spec({"name": "whole", "model": "models:/m/1", "resources": {"gpus": "2"}})
    assert whole.resources.gpus == 2 and not whole.resources.shares_a_gpu
    assert whole.resources.kubernetes_requests() == {"nvidia.com/gpu": "2"}
    assert whole.to_dict()["resources"] == {"gpus": 2}


@pytest.mark.parametrize(("drift", "message"), [
    ({"window": 1}, r"^spec\.drift\.window: must be"),
    ({"window": "big"}, r"^spec\.drift\.window: "),
    ({"size": 10}, r"^spec\.drift: unknown field 'size'"),
])
def test_a_bad_drift_window_is_named(drift: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        parse_spec(_with(drift=drift))


def test_the_drift_window_reaches_the_replica_command() -> None:
    from capstan.serving.replicas import serve_command

    command = serve_command("models:/m/1", "d", drift_window=250)
    assert command[command.index("--drift-window") + 1] == "250"
    assert "--drift-window" not in serve_command("models:/m/1", "d")
