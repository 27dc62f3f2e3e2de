"""The deployment spec: what to serve, how many copies, how traffic splits, what each copy needs. Pure.

A `DeploymentSpec` is an immutable record that holds everything a renderer needs to write a Kubernetes Deployment
(and its autoscaler) without consulting anything else. It is read from a mapping or YAML document shaped like::

    name: fraud-scorer                      # a DNS-1123 label
    model: models:/fraud@champion           # or models:/NAME/VERSION, or runs:/RUN_ID/PATH
    replicas: 2                             # either a fixed count...
    autoscaling:                            # ...or autoscaling (not both)
      min_replicas: 0                       # 0 allows scale-to-zero
      max_replicas: 8
      target_concurrency: 4                 # or target_rps, target_waiting, target_tokens_per_second (one)
      stabilization_window_seconds: 300
    canary: {model: models:/fraud/7, traffic: 10}       # percent of live traffic, 0-100
    shadow: {model: runs:/<run id>/model, traffic: 5}   # percent of requests mirrored, 0-100
    resources: {cpu: 500m, memory: 2Gi, gpus: 1, queue: serving}
    batching: {max_batch_size: 32, max_delay_ms: 5}
    payload_logging: {sample_rate: 0.1}
    llm: {backend: transformers, device: auto, max_num_seqs: 8, max_waiting: 64}   # language models only

Every error is an `InvalidParameterValue` whose message starts with the path of the offending field, e.g.
``spec.canary.traffic: must be between 0 and 100, got 120``; unknown keys are refused by name. `to_dict` gives
the normalised document back, and ``parse_spec(spec.to_dict()) == spec``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from capstan.errors import InvalidParameterValue
from capstan.names import check_characters
from capstan.resources.quantity import MILLI, parse_quantity

ROOT = "spec"
"""The path every error message starts from."""

MAX_STABILIZATION_WINDOW_SECONDS = 3600
"""Kubernetes' HorizontalPodAutoscaler accepts at most one hour."""
MAX_BATCH_DELAY_MS = 60_000.0
"""A batch that waits longer than a minute for company is a typo, not a latency budget."""
DEFAULT_DRIFT_WINDOW = 1000
"""Rows per drift window of a replica unless the spec says otherwise (``drift.window``)."""
MAX_DRIFT_WINDOW = 1_000_000
LLM_BACKENDS = ("transformers", "vllm")
"""The generation engines of ``capstan serve --backend``."""
MAX_NUM_SEQS = 4096
MAX_WAITING = 1_000_000
"""The bounds ``capstan serve`` puts on ``--max-num-seqs`` and ``--max-waiting``."""
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_MODEL_NAME = r"[^/@\s]+"
_ALIAS_URI = re.compile(rf"^models:/(?P<name>{_MODEL_NAME})@(?P<alias>[A-Za-z0-9_-]{{1,255}})$")
_VERSION_URI = re.compile(rf"^models:/(?P<name>{_MODEL_NAME})/(?P<version>[1-9][0-9]{{0,9}})$")
_RUN_URI = re.compile(r"^runs:/(?P<run_id>[A-Za-z0-9][A-Za-z0-9_-]{0,63})/(?P<path>.+)$")
_MAX_URI_LENGTH = 1000
_URI_SHAPES = "models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"


# ---------------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ModelUri:
    """A validated model URI; ``kind`` says which of the three shapes it has and which fields are set."""

    uri: str
    kind: Literal["alias", "version", "run"]
    name: str | None = None
    alias: str | None = None
    version: int | None = None
    run_id: str | None = None
    path: str | None = None

    def __str__(self) -> str:
        return self.uri


ScalingMetric = Literal["concurrency", "rps", "waiting", "tokens_per_second"]
"""What autoscaling tracks per replica: requests in flight (and waiting for a replica) at the routers, requests per
second, or, for language models, requests waiting in the replicas' engines (vLLM's ``num_requests_waiting``) or
generated tokens per second."""


@dataclass(frozen=True)
class Autoscaling:
    """Replicas between ``min_replicas`` (0: scale to zero) and ``max_replicas``, aiming at one target per replica:
    in-flight requests (``target_concurrency``), requests per second (``target_rps``), requests waiting in a
    language model's engine (``target_waiting``) or generated tokens per second (``target_tokens_per_second``),
    exactly one of them."""

    min_replicas: int
    max_replicas: int
    target_concurrency: float | None = None
    target_rps: float | None = None
    stabilization_window_seconds: int = 300
    target_waiting: float | None = None
    target_tokens_per_second: float | None = None

    @property
    def scales_to_zero(self) -> bool:
        return self.min_replicas == 0

    @property
    def metric(self) -> ScalingMetric:
        """Which metric the target is set for."""
        if self.target_concurrency is not None:
            return "concurrency"
        if self.target_waiting is not None:
            return "waiting"
        if self.target_tokens_per_second is not None:
            return "tokens_per_second"
        return "rps"

    @property
    def target(self) -> float:
        """The target value per replica of `metric`."""
        value = {"concurrency": self.target_concurrency, "rps": self.target_rps, "waiting": self.target_waiting,
                 "tokens_per_second": self.target_tokens_per_second}[self.metric]
        return value if value is not None else 1.0

    @property
    def reads_engine_load(self) -> bool:
        """True when the metric comes from the replicas' language-model engines (``GET /llm/stats``), not only
        from the routers."""
        return self.metric in ("waiting", "tokens_per_second")


@dataclass(frozen=True)
class TrafficTarget:
    """A second model beside the primary one: a canary answers ``traffic`` percent of live requests, a shadow is
    sent a copy of ``traffic`` percent of them (its answers are recorded, never returned)."""

    model: ModelUri
    traffic: float


@dataclass(frozen=True)
class Resources:
    """What each replica requests. CPU and memory are milli-units (`capstan.resources.quantity`; memory in
    milli-bytes), ``None`` when not requested; ``gpus`` is whole devices, or a fraction below one (``0.25``: a share
    of one device, as pipeline steps may ask); ``queue`` is the workload queue to admit replicas through, ``None``
    for none."""

    cpu_milli: int | None = None
    memory_milli: int | None = None
    gpus: float = 0
    queue: str | None = None

    @property
    def shares_a_gpu(self) -> bool:
        """True for a fractional GPU request (a share of one device)."""
        return 0 < self.gpus < 1

    @property
    def cpu(self) -> str | None:
        """The CPU request as a Kubernetes quantity (``500m``, ``2``)."""
        return None if self.cpu_milli is None else _render_decimal(self.cpu_milli)

    @property
    def memory(self) -> str | None:
        """The memory request as a Kubernetes quantity (``2Gi``, ``1500M``... exact, never rounded)."""
        return None if self.memory_milli is None else _render_memory(self.memory_milli)

    def kubernetes_requests(self, gpu_resource: str = "nvidia.com/gpu",
                            shared_gpu_resource: str = "nvidia.com/gpu.shared") -> dict[str, str]:
        """The container's ``resources.requests`` (also its limits for GPUs, which Kubernetes requires equal).

        Extended resources are integers, so a fractional request becomes one unit of ``shared_gpu_resource``: the
        name NVIDIA's device plugin gives time-sliced GPU replicas when it renames shared devices."""
        requests: dict[str, str] = {}
        if self.cpu is not None:
            requests["cpu"] = self.cpu
        if self.memory is not None:
            requests["memory"] = self.memory
        if self.shares_a_gpu:
            requests[shared_gpu_resource] = "1"
        elif self.gpus:
            requests[gpu_resource] = str(int(self.gpus))
        return requests


@dataclass(frozen=True)
class Batching:
    """Server-side batching: up to ``max_batch_size`` requests, waiting at most ``max_delay_ms`` for them."""

    max_batch_size: int
    max_delay_ms: float


@dataclass(frozen=True)
class LlmServing:
    """How a language model's replicas generate (``capstan serve``'s language-model options; None: its default):
    the engine, the device of the transformers engine, sequences in the continuous batch and requests that may
    wait for a slot (beyond them 429 with ``Retry-After``)."""

    backend: Literal["transformers", "vllm"] | None = None
    device: str | None = None
    max_num_seqs: int | None = None
    max_waiting: int | None = None

    def serve_options(self) -> list[str]:
        """The ``capstan serve`` options that carry these settings."""
        flags = (("--backend", self.backend), ("--device", self.device), ("--max-num-seqs", self.max_num_seqs),
                 ("--max-waiting", self.max_waiting))
        return [part for flag, value in flags if value is not None for part in (flag, str(value))]

    def to_dict(self) -> dict[str, Any]:
        """The ``llm`` section of the normalised document (only what is set)."""
        fields = {"backend": self.backend, "device": self.device, "max_num_seqs": self.max_num_seqs,
                  "max_waiting": self.max_waiting}
        return {key: value for key, value in fields.items() if value is not None}


@dataclass(frozen=True)
class DeploymentSpec:
    """One deployment, complete: exactly one of ``replicas`` and ``autoscaling`` is set."""

    name: str
    model: ModelUri
    replicas: int | None = 1
    autoscaling: Autoscaling | None = None
    canary: TrafficTarget | None = None
    shadow: TrafficTarget | None = None
    resources: Resources = Resources()
    batching: Batching | None = None
    payload_sample_rate: float = 0.0
    drift_window: int = DEFAULT_DRIFT_WINDOW
    llm: LlmServing | None = None

    def __post_init__(self) -> None:
        if (self.replicas is None) == (self.autoscaling is None):
            raise InvalidParameterValue(f"{ROOT}: set exactly one of replicas and autoscaling")

    def to_dict(self) -> dict[str, Any]:
        """The normalised document (plain JSON/YAML types); `parse_spec` reads it back to an equal spec."""
        out: dict[str, Any] = {"name": self.name, "model": self.model.uri}
        if self.autoscaling is not None:
            a = self.autoscaling
            scaling: dict[str, Any] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas}
            if a.target_concurrency is not None:
                scaling["target_concurrency"] = a.target_concurrency
            if a.target_rps is not None:
                scaling["target_rps"] = a.target_rps
            if a.target_waiting is not None:
                scaling["target_waiting"] = a.target_waiting
            if a.target_tokens_per_second is not None:
                scaling["target_tokens_per_second"] = a.target_tokens_per_second
            scaling["stabilization_window_seconds"] = a.stabilization_window_seconds
            out["autoscaling"] = scaling
        else:
            out["replicas"] = self.replicas
        for key, target in (("canary", self.canary), ("shadow", self.shadow)):
            if target is not None:
                out[key] = {"model": target.model.uri, "traffic": target.traffic}
        r = self.resources
        resources: dict[str, Any] = {}
        if r.cpu is not None:
            resources["cpu"] = r.cpu
        if r.memory is not None:
            resources["memory"] = r.memory
        if r.gpus:
            resources["gpus"] = r.gpus if r.shares_a_gpu else int(r.gpus)
        if r.queue is not None:
            resources["queue"] = r.queue
        if resources:
            out["resources"] = resources
        if self.batching is not None:
            out["batching"] = {"max_batch_size": self.batching.max_batch_size,
                               "max_delay_ms": self.batching.max_delay_ms}
        if self.payload_sample_rate:
            out["payload_logging"] = {"sample_rate": self.payload_sample_rate}
        if self.drift_window != DEFAULT_DRIFT_WINDOW:
            out["drift"] = {"window": self.drift_window}
        if self.llm is not None:
            out["llm"] = self.llm.to_dict()
        return out

    def classic_options(self) -> list[str]:
        """The fields set that only a classic (not a language) model uses, as spec paths with what to use instead;
        a language model's replica refuses them (`capstan.serving.manage` refuses such a spec at apply time)."""
        found = []
        if self.batching is not None:
            found.append(f"{ROOT}.batching: a language model batches by sequence; use {ROOT}.llm.max_num_seqs")
        if self.payload_sample_rate > 0:
            found.append(f"{ROOT}.payload_logging: payload logging is not available for language models")
        if self.drift_window != DEFAULT_DRIFT_WINDOW:
            found.append(f"{ROOT}.drift: drift is not measured for language models")
        return found


# ---------------------------------------------------------------------------------------------------- parsing

TOP_KEYS = frozenset({"name", "model", "replicas", "autoscaling", "canary", "shadow", "resources", "batching",
                      "payload_logging", "drift", "llm"})
TARGET_METRIC_KEYS = ("target_concurrency", "target_rps", "target_waiting", "target_tokens_per_second")
"""The autoscaling targets, of which a spec sets exactly one (see `ScalingMetric`)."""
AUTOSCALING_KEYS = frozenset({"min_replicas", "max_replicas", *TARGET_METRIC_KEYS, "stabilization_window_seconds"})
TARGET_KEYS = frozenset({"model", "traffic"})
RESOURCE_KEYS = frozenset({"cpu", "memory", "gpus", "queue"})
BATCHING_KEYS = frozenset({"max_batch_size", "max_delay_ms"})
PAYLOAD_LOGGING_KEYS = frozenset({"sample_rate"})
DRIFT_KEYS = frozenset({"window"})
LLM_KEYS = frozenset({"backend", "device", "max_num_seqs", "max_waiting"})


def _fail(path: str, message: str) -> InvalidParameterValue:
    return InvalidParameterValue(f"{path}: {message}")


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:56] + "...'"


def _mapping(value: object, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {type(value).__name__}")
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        noun = "field" if len(unknown) == 1 else "fields"
        raise _fail(path, f"unknown {noun} {', '.join(repr(k) for k in unknown)} "
                          f"(allowed: {', '.join(sorted(allowed))})")
    return value


def _required(obj: Mapping[str, Any], key: str, path: str) -> Any:
    value = obj.get(key)
    if value is None:
        raise _fail(f"{path}.{key}", "is required")
    return value


def _int(value: object, path: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"expected an integer, got {_short(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise _fail(path, f"must be {bound}, got {value}")
    return value


def _number(value: object, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"expected a number, got {_short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise _fail(path, f"expected a finite number, got {value!r}")
    return number


def _percent(value: object, path: str) -> float:
    number = _number(value, path)
    if not 0 <= number <= 100:
        raise _fail(path, f"must be between 0 and 100, got {value!r}")
    return number


def _positive(value: object, path: str) -> float:
    number = _number(value, path)
    if number <= 0:
        raise _fail(path, f"must be greater than 0, got {value!r}")
    return number


def parse_name(value: object, path: str = f"{ROOT}.name") -> str:
    """A deployment name: a DNS-1123 label (lowercase letters, digits and ``-``, alphanumeric at both ends, at most
    63 characters), because it becomes the name of the Kubernetes Deployment and Service."""
    if not isinstance(value, str):
        raise _fail(path, f"expected a string, got {type(value).__name__}")
    if not _DNS_LABEL.match(value):
        raise _fail(path, f"{_short(value)} is not a DNS-1123 label (lowercase letters, digits and '-', starting "
                          "and ending with a letter or digit, at most 63 characters)")
    return value


def parse_model_uri(value: object, path: str = f"{ROOT}.model") -> ModelUri:
    """Validate the shape of a model URI (not whether the model exists: that needs the registry)."""
    if not isinstance(value, str):
        raise _fail(path, f"expected a model URI ({_URI_SHAPES}), got {type(value).__name__}")
    if len(value) > _MAX_URI_LENGTH:
        raise _fail(path, f"model URI is longer than {_MAX_URI_LENGTH} characters")
    check_characters(value, path)
    if match := _ALIAS_URI.match(value):
        return ModelUri(value, "alias", name=match["name"], alias=match["alias"])
    if match := _VERSION_URI.match(value):
        return ModelUri(value, "version", name=match["name"], version=int(match["version"]))
    if match := _RUN_URI.match(value):
        artifact_path = match["path"]
        segments = artifact_path.split("/")
        if any(s in ("", ".", "..") for s in segments) or "\\" in artifact_path or any(c.isspace() for c in
                                                                                          artifact_path):
            raise _fail(path, f"{_short(value)}: the artifact path must be relative, without empty, '.' or '..' "
                              "segments, backslashes or spaces")
        return ModelUri(value, "run", run_id=match["run_id"], path=artifact_path)
    raise _fail(path, f"{_short(value)} is not a model URI of the shape {_URI_SHAPES} (VERSION a positive "
                      "integer, ALIAS letters, digits, '_' and '-')")


def _autoscaling(raw: object, path: str) -> Autoscaling:
    obj = _mapping(raw, path, AUTOSCALING_KEYS)
    min_replicas = _int(obj.get("min_replicas", 1), f"{path}.min_replicas", minimum=0)
    max_replicas = _int(_required(obj, "max_replicas", path), f"{path}.max_replicas", minimum=1)
    if max_replicas < min_replicas:
        raise _fail(f"{path}.max_replicas", f"must be at least min_replicas ({min_replicas}), got {max_replicas}")
    given = [key for key in TARGET_METRIC_KEYS if obj.get(key) is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise _fail(path, "set exactly one of target_concurrency and target_rps, or for a language model "
                          f"target_waiting or target_tokens_per_second{got}")
    targets = {key: _positive(obj[key], f"{path}.{key}") for key in given}
    window = _int(obj.get("stabilization_window_seconds", 300), f"{path}.stabilization_window_seconds",
                  minimum=0, maximum=MAX_STABILIZATION_WINDOW_SECONDS)
    return Autoscaling(min_replicas, max_replicas, targets.get("target_concurrency"), targets.get("target_rps"),
                       window, targets.get("target_waiting"), targets.get("target_tokens_per_second"))


def _target(raw: object, path: str, primary: ModelUri) -> TrafficTarget:
    obj = _mapping(raw, path, TARGET_KEYS)
    model = parse_model_uri(_required(obj, "model", path), f"{path}.model")
    if model.uri == primary.uri:
        raise _fail(f"{path}.model", f"is the primary model {primary.uri!r}; name a different model")
    return TrafficTarget(model, _percent(_required(obj, "traffic", path), f"{path}.traffic"))


def _resources(raw: object, path: str) -> Resources:
    obj = _mapping(raw, path, RESOURCE_KEYS)
    cpu = memory = None
    if obj.get("cpu") is not None:
        cpu = parse_quantity(obj["cpu"], path=f"{path}.cpu")
        if cpu == 0:
            raise _fail(f"{path}.cpu", "must be greater than 0 (leave it out to request none)")
    if obj.get("memory") is not None:
        memory = parse_quantity(obj["memory"], path=f"{path}.memory")
        if memory == 0:
            raise _fail(f"{path}.memory", "must be greater than 0 (leave it out to request none)")
    gpus: float = 0
    if obj.get("gpus") is not None:
        gpu_milli = parse_quantity(obj["gpus"], path=f"{path}.gpus")
        if gpu_milli % MILLI and gpu_milli > MILLI:
            raise _fail(f"{path}.gpus", f"must be a whole number of GPUs, or a fraction below one (a share of one "
                                        f"device), got {obj['gpus']!r}")
        gpus = gpu_milli // MILLI if gpu_milli % MILLI == 0 else gpu_milli / MILLI
    queue = None
    if obj.get("queue") is not None:
        queue = obj["queue"]
        if not isinstance(queue, str) or not queue.strip():
            raise _fail(f"{path}.queue", "expected a non-empty queue name")
        check_characters(queue, f"{path}.queue")
    return Resources(cpu, memory, gpus, queue)


def _batching(raw: object, path: str) -> Batching:
    obj = _mapping(raw, path, BATCHING_KEYS)
    size = _int(_required(obj, "max_batch_size", path), f"{path}.max_batch_size", minimum=1)
    delay = _number(_required(obj, "max_delay_ms", path), f"{path}.max_delay_ms")
    if not 0 <= delay <= MAX_BATCH_DELAY_MS:
        raise _fail(f"{path}.max_delay_ms", f"must be between 0 and {MAX_BATCH_DELAY_MS:.0f}, got {delay:g}")
    return Batching(size, delay)


def _sample_rate(raw: object, path: str) -> float:
    obj = _mapping(raw, path, PAYLOAD_LOGGING_KEYS)
    rate = _number(obj.get("sample_rate", 0.0), f"{path}.sample_rate")
    if not 0 <= rate <= 1:
        raise _fail(f"{path}.sample_rate", f"must be between 0 and 1, got {obj['sample_rate']!r}")
    return rate


def _drift_window(raw: object, path: str) -> int:
    obj = _mapping(raw, path, DRIFT_KEYS)
    return _int(obj.get("window", DEFAULT_DRIFT_WINDOW), f"{path}.window", minimum=2, maximum=MAX_DRIFT_WINDOW)


def _llm(raw: object, path: str) -> LlmServing:
    obj = _mapping(raw, path, LLM_KEYS)
    backend = obj.get("backend")
    if backend is not None and backend not in LLM_BACKENDS:
        raise _fail(f"{path}.backend", f"must be one of {', '.join(LLM_BACKENDS)}, got {_short(backend)}")
    device = obj.get("device")
    if device is not None and (not isinstance(device, str) or not _DEVICE.fullmatch(device)):
        raise _fail(f"{path}.device", f"must be auto, cpu, cuda, cuda:N or mps, got {_short(device)}")
    if device is not None and device != "auto" and backend == "vllm":
        raise _fail(f"{path}.device", "applies to the transformers backend (vLLM places the model itself)")
    seqs = obj.get("max_num_seqs")
    waiting = obj.get("max_waiting")
    return LlmServing(
        backend, device,
        None if seqs is None else _int(seqs, f"{path}.max_num_seqs", minimum=1, maximum=MAX_NUM_SEQS),
        None if waiting is None else _int(waiting, f"{path}.max_waiting", minimum=1, maximum=MAX_WAITING))


def parse_spec(data: Mapping[str, Any]) -> DeploymentSpec:
    """Validate a parsed document and build the `DeploymentSpec`; every error names the offending path."""
    top = _mapping(data, ROOT, TOP_KEYS)
    name = parse_name(_required(top, "name", ROOT))
    model = parse_model_uri(_required(top, "model", ROOT))
    replicas: int | None = None
    autoscaling = None
    if top.get("autoscaling") is not None:
        if top.get("replicas") is not None:
            raise _fail(f"{ROOT}.replicas", "set either replicas or autoscaling, not both")
        autoscaling = _autoscaling(top["autoscaling"], f"{ROOT}.autoscaling")
    else:
        replicas = 1 if top.get("replicas") is None else _int(top["replicas"], f"{ROOT}.replicas", minimum=1)
    canary = None if top.get("canary") is None else _target(top["canary"], f"{ROOT}.canary", model)
    shadow = None if top.get("shadow") is None else _target(top["shadow"], f"{ROOT}.shadow", model)
    resources = Resources() if top.get("resources") is None else _resources(top["resources"], f"{ROOT}.resources")
    batching = None if top.get("batching") is None else _batching(top["batching"], f"{ROOT}.batching")
    rate = 0.0
    if top.get("payload_logging") is not None:
        rate = _sample_rate(top["payload_logging"], f"{ROOT}.payload_logging")
    window = DEFAULT_DRIFT_WINDOW if top.get("drift") is None else _drift_window(top["drift"], f"{ROOT}.drift")
    llm = None if top.get("llm") is None else _llm(top["llm"], f"{ROOT}.llm")
    spec = DeploymentSpec(name, model, replicas, autoscaling, canary, shadow, resources, batching, rate, window, llm)
    if llm is not None and spec.classic_options():
        raise InvalidParameterValue(spec.classic_options()[0])
    return spec


def load_spec_yaml(text: str, *, source: str = "deployment") -> DeploymentSpec:
    """Parse and validate a YAML deployment spec. Syntax errors name ``source``, line and column; a key given twice
    in one mapping is refused (plain YAML loading would silently keep the last one)."""
    import yaml

    class _StrictLoader(yaml.SafeLoader):
        pass

    def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                mark = key_node.start_mark
                raise InvalidParameterValue(f"{source}:{mark.line + 1}:{mark.column + 1}: duplicate key {key!r}")
            seen.add(key)
        return loader.construct_mapping(node)

    _StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidParameterValue(f"{where}: invalid YAML: {problem}") from None
    if not isinstance(data, Mapping):
        raise _fail(ROOT, f"expected a mapping, got {type(data).__name__}")
    return parse_spec(data)


# ---------------------------------------------------------------------------------------------------- rendering


def _render_decimal(milli: int) -> str:
    return str(milli // MILLI) if milli % MILLI == 0 else f"{milli}m"


def _render_memory(milli: int) -> str:
    if milli % MILLI:
        return f"{milli}m"
    whole = milli // MILLI
    for suffix, factor in (("Ei", 2**60), ("Pi", 2**50), ("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20),
                           ("Ki", 2**10)):
        if whole % factor == 0:
            return f"{whole // factor}{suffix}"
    return str(whole)
