"""An ``hf`` rollout for veRL: generation served by a Hugging Face model's ``generate`` on CPU.

veRL serves rollouts from vLLM / SGLang / TensorRT-LLM servers, all of which need a GPU. This is
a CPU stand-in speaking the same interfaces, registered through veRL's own registries under the
rollout name ``hf`` (``actor_rollout_ref.rollout.name=hf``):

* :class:`HFReplica` (``RolloutReplicaRegistry``): one :class:`HFRolloutServer` Ray actor per
  replica, named ``hf_server_<replica>``, in veRL's hybrid mode (next to the trainer workers);
* :class:`HFRolloutServer`: veRL's token-in-token-out ``generate`` (what ``LLMServerClient``
  calls), sampling with ``model.generate`` (temperature, top-p, top-k, stop strings and token
  ids, ``max_tokens`` as vLLM caps it; stop strings are matched by Hugging Face's
  ``StopStringCriteria``, at the end of prompt plus output) and returning each token's
  log-probability under the distribution it was sampled from;
* :class:`HFServerAdapter` (``verl.workers.rollout.base._ROLLOUT_REGISTRY``, a plain dict veRL
  reads by ``(name, mode)``; it has no register function): the rollout object in each trainer
  worker; ``update_weights`` sends the trained weights to its replica's server, so every step
  samples from the current policy (veRL's ``naive`` checkpoint engine calls it).

It is meant for tiny models (tests, the ``verl-tiny-cpu`` recipe): one request at a time, no KV
cache between turns, text-only models.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import ray
import torch
from verl.workers.rollout.base import _ROLLOUT_REGISTRY, BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

__all__ = ["HFReplica", "HFRolloutServer", "HFServerAdapter", "ROLLOUT_NAME", "register_hf_rollout"]

ROLLOUT_NAME = "hf"


def server_name(replica_rank: int, suffix: str = "") -> str:
    return f"hf_server_{replica_rank}{suffix}"


class HFRolloutServer:
    """One replica's model, answering veRL's ``generate`` requests with ``model.generate``."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        self.config, self.replica_rank = config, replica_rank
        path = getattr(model_config, "local_path", None) or model_config.path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        self.global_steps: int | None = None
        self.requests = 0
        self.seed = int(getattr(config, "seed", 0) or 0)

    def _max_tokens(self, prompt_len: int, params: dict[str, Any]) -> int:
        """vLLM's rule: the request's ``max_tokens``, else what the response length leaves."""
        max_len = int(self.config.prompt_length) + int(self.config.response_length)
        requested = params.pop("max_tokens", params.pop("max_new_tokens", None))
        if requested is None:
            requested = min(int(self.config.response_length), max_len - prompt_len)
        return max(1, min(int(requested), max_len - prompt_len))

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data: Any = None, video_data: Any = None, **kwargs: Any) -> TokenOutput:
        if image_data or video_data:
            raise ValueError("the hf rollout serves text-only models")
        params = dict(sampling_params)
        max_new = self._max_tokens(len(prompt_ids), params)
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_k = int(params.get("top_k", -1) or -1)
        options: dict[str, Any] = {"max_new_tokens": max_new, "do_sample": temperature > 0,
                                   "return_dict_in_generate": True, "output_scores": True,
                                   "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id}
        if temperature > 0:
            options.update(temperature=temperature, top_p=float(params.get("top_p", 1.0)),
                           top_k=top_k if top_k > 0 else 0)
        stop_ids = [int(t) for t in params.get("stop_token_ids") or []]
        eos = self.tokenizer.eos_token_id
        options["eos_token_id"] = sorted({*stop_ids, *([eos] if eos is not None else [])}) or None
        if params.get("stop"):
            options.update(stop_strings=list(params["stop"]), tokenizer=self.tokenizer)
        self.requests += 1
        torch.manual_seed(self.seed + self.requests)
        inputs = torch.tensor([list(prompt_ids)])
        with torch.no_grad():
            out = self.model.generate(inputs, attention_mask=torch.ones_like(inputs), **options)
            new = out.sequences[0, inputs.shape[1]:]
            scores = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        tokens = [int(t) for t in new]
        pad = options["pad_token_id"]
        while len(tokens) > 1 and tokens[-1] == pad and pad not in (options["eos_token_id"] or []):
            tokens.pop()
        log_probs = [float(s) for s in scores[: len(tokens)]] if params.get("logprobs") else None
        stopped = len(tokens) < max_new or (tokens and tokens[-1] in (options["eos_token_id"] or []))
        return TokenOutput(token_ids=tokens, log_probs=log_probs, stop_reason="completed" if stopped else None,
                           extra_fields={"global_steps": self.global_steps})

    def load_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> int:
        """Load the trainer's weights (HF names); returns how many tensors were loaded."""
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"the trainer sent weights the rollout model does not have: {unexpected[:5]}")
        self.global_steps = global_steps
        return len(state)

    def stats(self) -> dict[str, Any]:
        return {"requests": self.requests, "global_steps": self.global_steps}

    # veRL's server lifecycle: nothing to free on CPU.
    async def wake_up(self) -> None: ...
    async def sleep(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def abort_all_requests(self, reject_request: bool = False) -> dict[str, Any]:
        return {"aborted_count": 0, "request_ids": []}
    async def resume_generation(self) -> None: ...
    async def start_profile(self, **kwargs: Any) -> None: ...
    async def stop_profile(self) -> None: ...


class HFReplica(RolloutReplica):
    """A replica whose server is one :class:`HFRolloutServer` actor (no GPU, no HTTP)."""

    def rollout_worker_use_gpu(self) -> bool:
        return False

    async def launch_servers(self) -> None:
        name = server_name(self.replica_rank, self.name_suffix)
        server = ray.remote(HFRolloutServer).options(name=name, num_cpus=0, max_concurrency=1).remote(
            config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = name


class HFServerAdapter(BaseRollout):
    """The rollout object in a trainer worker: sends the trained weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh)
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank, self.is_leader = rank // world, rank % world == 0

    async def update_weights(self, weights: Iterable[tuple[str, torch.Tensor]], wire_format: str = "named_tensors",
                             **kwargs: Any) -> None:
        if wire_format != "named_tensors":
            raise ValueError(f"the hf rollout takes named_tensors weights, not {wire_format}")
        state = {}
        for name, tensor in weights:  # every rank walks the generator (FSDP gathers inside it)
            full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
            state[name] = full.detach().to("cpu", dtype=torch.float32, copy=True)
        if self.is_leader:
            server = ray.get_actor(server_name(self.replica_rank))
            await server.load_weights.remote(state, kwargs.get("global_steps"))

    async def resume(self, tags: list[str]) -> None:
        return None

    async def release(self) -> None:
        return None


def register_hf_rollout() -> None:
    """Register ``hf`` in veRL's replica registry and its rollout-adapter table."""
    RolloutReplicaRegistry.register(ROLLOUT_NAME, lambda: HFReplica)
    _ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = f"{__name__}.HFServerAdapter"


register_hf_rollout()
