"""The ``hf`` rollout server (veRL's generate interface over model.generate) and the CPU platform."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

import asyncio
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf
from verl.workers.rollout.base import get_rollout_class
from verl.workers.rollout.replica import get_rollout_replica_class

from mmsearch_gym.integrations import tiny_models
from mmsearch_gym.integrations.verl.cpu_platform import CPUPlatform
from mmsearch_gym.integrations.verl.hf_rollout import HFReplica, HFRolloutServer, HFServerAdapter

from .helpers import TEMPLATE


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> HFRolloutServer:
    path = tiny_models.save_tiny_model(tmp_path_factory.mktemp("hf") / "model", chat_template=TEMPLATE,
                                       texts=tiny_models.dialect_corpus(), vocab_size=600)
    config = OmegaConf.create({"prompt_length": 64, "response_length": 12, "seed": 0})
    return HFRolloutServer(config, SimpleNamespace(local_path=str(path), path=str(path)), replica_rank=0)


PROMPT = "Question: what is this flag?"


def generate(server: HFRolloutServer, **params) -> object:
    prompt = server.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    return asyncio.run(server.generate(prompt_ids=prompt, sampling_params=params, request_id="r"))


def test_verl_finds_the_hf_rollout_by_name():
    assert get_rollout_replica_class("hf") is HFReplica
    assert get_rollout_class("hf", "async") is HFServerAdapter


def test_generate_follows_verls_sampling_params(server):
    out = generate(server, temperature=1.0, logprobs=True)
    assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)  # response_length caps it
    assert all(lp <= 0.0 for lp in out.log_probs)
    assert len(generate(server, temperature=1.0, max_tokens=3).token_ids) <= 3
    assert generate(server, temperature=1.0).log_probs is None
    greedy = generate(server, temperature=0)
    assert generate(server, temperature=0).token_ids == greedy.token_ids
    stop = server.tokenizer.decode(greedy.token_ids[:3])
    stopped = generate(server, temperature=0, stop=[stop])  # a stop string ends the turn, kept in it
    assert stopped.token_ids == greedy.token_ids[:len(stopped.token_ids)] and len(stopped.token_ids) <= 3
    assert (PROMPT + server.tokenizer.decode(stopped.token_ids)).endswith(stop)


def test_trained_weights_reach_the_server(server):
    before = generate(server, temperature=0).token_ids
    state = {name: torch.randn_like(p) for name, p in server.model.state_dict().items()}
    assert server.load_weights(state, global_steps=3) == len(state)
    assert server.stats()["global_steps"] == 3 and generate(server, temperature=0).token_ids != before
    with pytest.raises(ValueError, match="does not have"):
        server.load_weights({"not.a.weight": torch.zeros(1)})


def test_cpu_platform_speaks_gloo_on_cpu():
    platform = CPUPlatform()
    assert (platform.device_name, platform.communication_backend_name(), platform.current_device()) == (
        "cpu", "gloo", "cpu")
    assert torch.zeros(1).to(platform.current_device()).device.type == "cpu"
    assert platform.device_module.memory_allocated() == 0 and platform.device_module.is_available()
    assert platform.ray_resource_options(1) == {"num_gpus": 1}  # Ray's logical GPU slots
