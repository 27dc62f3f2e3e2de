"""The spec's ``llm`` section: validated with errors naming the field, round-tripped, and carried to the replica's
``capstan serve`` command line."""

from __future__ import annotations

from typing import Any

import pytest

from capstan.errors import InvalidParameterValue
from capstan.serving.replicas import serve_command
from capstan.serving.spec import LlmServing, parse_spec


def spec(**extra: Any) -> dict[str, Any]:
    return {"name": "chat", "model": "models:/tiny/1", **extra}


def test_the_llm_section_round_trips_and_reaches_the_replica_command() -> None:
    parsed = parse_spec(spec(llm={"backend": "transformers", "device": "cuda:1", "max_num_seqs": 4,
                                  "max_waiting": 9}))
    assert parsed.llm == LlmServing("transformers", "cuda:1", 4, 9)
    assert parse_spec(parsed.to_dict()) == parsed
    command = serve_command("models:/tiny/1", "chat", llm=parsed.llm)
    assert command[-8:] == ["--backend", "transformers", "--device", "cuda:1", "--max-num-seqs", "4",
                            "--max-waiting", "9"]
    partial = parse_spec(spec(llm={"max_waiting": 1}))
    assert partial.to_dict()["llm"] == {"max_waiting": 1}
    assert serve_command("models:/tiny/1", "chat", llm=partial.llm)[-2:] == ["--max-waiting", "1"]
    assert "llm" not in parse_spec(spec()).to_dict()
    assert "--max-num-seqs" not in serve_command("models:/tiny/1", "chat")


@pytest.mark.parametrize(("llm", "message"), [
    ({"backend": "tgi"}, "spec.llm.backend: must be one of transformers, vllm, got 'tgi'"),
    ({"device": "tpu"}, "spec.llm.device: must be auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
    ({"device": 3}, "spec.llm.device: must be auto, cpu, cuda, cuda:N or mps, got 3"),
    ({"backend": "vllm", "device": "cuda"}, "spec.llm.device: applies to the transformers backend"),
    ({"max_num_seqs": 0}, "spec.llm.max_num_seqs: must be between 1 and 4096, got 0"),
    ({"max_num_seqs": 5000}, "spec.llm.max_num_seqs: must be between 1 and 4096, got 5000"),
    ({"max_waiting": True}, "spec.llm.max_waiting: expected an integer, got True"),
    ({"max_waiting": 1.5}, "spec.llm.max_waiting: expected an integer, got 1.5"),
    ({"max_batch": 4}, "spec.llm: unknown field 'max_batch'"),
    ("fast", "spec.llm: expected a mapping, got str"),
])
def test_bad_llm_values_name_the_field(llm: Any, message: str) -> None:
    with pytest.raises(InvalidParameterValue) as bad:
        parse_spec(spec(llm=llm))
    assert message in bad.value.message


@pytest.mark.parametrize(("extra", "message"), [
    ({"batching": {"max_batch_size": 4, "max_delay_ms": 1}},
     "spec.batching: a language model batches by sequence; use spec.llm.max_num_seqs"),
    ({"payload_logging": {"sample_rate": 0.5}}, "spec.payload_logging: payload logging is not available"),
    ({"drift": {"window": 50}}, "spec.drift: drift is not measured for language models"),
])
def test_llm_options_with_classic_options_are_refused(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterValue) as bad:
        parse_spec(spec(llm={"max_num_seqs": 2}, **extra))
    assert bad.value.message.startswith(message)
