"""``MMSearchAgentLoop``: veRL's agent loop over one MMSearchEnv per trajectory.

Registered as ``mmsearch_agent`` (rows from :func:`~.data.to_verl_rows` name it in
``agent_name``). Each turn the policy generates through veRL's server manager, stopping at the
dialect's closing tags; the decoded turn is the env's action (``env.step`` parses it, runs the
search through the env's backend and cache, applies budgets and feedback); the env's result
message is appended through veRL's Continuous Token builder, which gives its tokens
``response_mask`` 0. When the episode ends (or the response length runs out) the reward is
the env's ``score_episode`` breakdown of exactly those turns. ``env.step`` runs on the worker's
event loop, so one worker's searches run one at a time (scale with ``agent.num_workers``).

Agent loop yaml (``actor_rollout_ref.rollout.agent.agent_loop_config_path``)::

    - name: mmsearch_agent
      _target_: mmsearch_gym.integrations.verl.agent_loop.MMSearchAgentLoop
      env: {id: MMSearch-Train-v0, kwargs: {}}   # any EnvFactory description
      reward_source: env                         # or reward_fn: leave it to compute_score
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import (
    AgentLoopBase,
    AgentLoopOutput,
    _agent_loop_registry,
    register,
)

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.verl.data import AGENT_NAME
from mmsearch_gym.integrations.verl.envs import env_pool, plain
from mmsearch_gym.integrations.verl.reward import breakdown_fields

__all__ = ["MMSearchAgentLoop"]

logger = logging.getLogger(__name__)
REWARD_SOURCES = ("env", "reward_fn")


def _chat_message(message: Mapping[str, Any], vision: bool) -> tuple[dict[str, Any], list[Any]]:
    """An env chat message for veRL's builder, and its images; text-only models get text only."""
    content = message["content"]
    if isinstance(content, str):
        return {"role": message["role"], "content": content}, []
    images = [b["image"] for b in content if b.get("type") == "image"]
    if vision:
        blocks = [{"type": "image"} if b.get("type") == "image" else {"type": "text", "text": b["text"]}
                  for b in content]
        return {"role": message["role"], "content": blocks}, images
    text = "".join(b.get("text") or "" for b in content if b.get("type") == "text")
    return {"role": message["role"], "content": text}, []


class MMSearchAgentLoop(AgentLoopBase):
    """Drive an MMSearchEnv per trajectory; see the module docstring."""

    def __init__(self, *args: Any, env: Any = None, reward_source: str = "env", tools: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if reward_source not in REWARD_SOURCES:
            raise ConfigError(f"reward_source must be one of {REWARD_SOURCES}, got {reward_source!r}")
        self.env_config = plain(env)
        self.reward_source = reward_source
        self.response_length = int(self.rollout_config.response_length)

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        extra_info = plain(kwargs.get("extra_info")) or {}
        task_id = extra_info.get("task_id")
        if task_id is None:
            raise ConfigError("an mmsearch_agent row needs extra_info.task_id (see integrations.verl.data)")
        pool = env_pool(self.env_config if self.env_config is not None else extra_info.get("env"))
        env = pool.acquire()
        try:
            return await self._play(env, str(task_id), sampling_params)
        finally:
            pool.release(env)

    async def _play(self, env: Any, task_id: str, sampling_params: dict[str, Any]) -> AgentLoopOutput:
        vision = self.processor is not None and getattr(self.processor, "image_processor", None) is not None
        _, info = env.reset(options={"task_id": task_id})
        messages, images = [], []
        for message in info["messages"]:
            chat, found = _chat_message(message, vision)
            messages.append(chat)
            images += found
        self._assert_mm_supported(bool(images))
        ids = await self.ct_build_initial_tokens(messages, images=images or None)
        prompt_len = len(ids)
        mask: list[int] = []
        logprobs: list[float] = []
        params = {**sampling_params, "stop": list(env.dialect.stop_sequences)}
        metrics: dict[str, Any] = {}
        request_id = uuid4().hex
        turns = 0
        done = False
        while not done and len(mask) < self.response_length:
            out = await self.server_manager.generate(request_id=request_id, prompt_ids=ids,
                                                     sampling_params=params, image_data=images or None)
            merged, mask, new_logprobs = await self.ct_merge_assistant_token(
                ids, list(out.token_ids), mask, logprobs if (logprobs or out.log_probs) else None,
                assistant_logprobs=list(out.log_probs) if out.log_probs else None)
            ids, logprobs = merged.token_ids, list(new_logprobs or [])
            text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
            turns += 1
            _, _, terminated, truncated, info = env.step(text)
            done = bool(terminated or truncated)
            messages.append({"role": "assistant", "content": text})
            if done or len(mask) >= self.response_length:
                break
            previous = list(messages)
            result, found = _chat_message(info["messages"][-1], vision)
            self._assert_mm_supported(bool(found))
            messages.append(result)
            merged, mask, new_logprobs = await self.ct_merge_context_msg(previous, messages, ids, mask,
                                                                         logprobs or None)
            ids, logprobs = merged.token_ids, list(new_logprobs or [])
            images += found
        breakdown = info.get("reward_breakdown") or env.score()
        fields = breakdown_fields(breakdown)
        extra = {"mmsearch_turns": env.turns, "mmsearch_task_id": task_id,
                 "mmsearch_reward": env.reward_spec.describe(), "reward_extra_info": fields}
        return AgentLoopOutput(
            prompt_ids=ids[:prompt_len], response_ids=ids[prompt_len:][: self.response_length],
            response_mask=mask[: self.response_length],
            response_logprobs=logprobs[: self.response_length] if logprobs else None,
            multi_modal_data={"images": images} if images else {},
            reward_score=fields["score"] if self.reward_source == "env" else None,
            num_turns=2 * turns + 1, metrics=metrics, extra_fields=extra)


# The bare name (env from each row's extra_info, else MMSearch-v0), unless an agent-loop yaml
# already registered it with its env: veRL's AgentLoopWorker loads that yaml before this module
# is first imported (by hydra, to build the first loop), and an unconditional @register would
# replace the yaml's entry, env and all, for every later trajectory.
if AGENT_NAME not in _agent_loop_registry:
    register(AGENT_NAME)(MMSearchAgentLoop)
