"""TRL adapter: train LLM policies on MMSearchEnv with GRPO, after an SFT cold start.

Two GRPO routes, both stepping the same ``MMSearchEnv`` (the env parses every turn, runs the
tools through its search backend and computes the papers' reward; this package never parses or
scores model text itself):

* ``rollout_func`` (:func:`make_rollout_func`, :mod:`.rollout`), any tag dialect
  (``mmsearch-r1``, ``deepmmsearch-r1``, ``tool-json``). Multi-turn episodes are generated
  there: generate until a closing tag of the dialect, step the env, append the tool result as a
  user turn rendered with the chat template, go on until the episode ends. It returns
  ``prompt_ids``, ``completion_ids``, ``logprobs``, ``env_mask`` (1 on tokens the model sampled,
  0 on tool results and the chat-template glue around them) and the env's rewards and
  breakdowns, which :func:`env_reward` hands to GRPO unchanged. Generation uses the trainer's
  unwrapped model, or TRL's vLLM helper (``trainer.vllm_generation``) when the trainer was
  configured with ``use_vllm=True``.
* ``environment_factory`` (:class:`MMSearchToolEnv`, :mod:`.tool_env`), the ``tool-json``
  dialect through TRL's own tool-calling loop: ``text_search(query)`` and ``image_search(x1, y1,
  x2, y2)`` are tool methods that step the env; the final ``<answer>..</answer>`` arrives as the
  last assistant message and is stepped into the env by :func:`episode_accuracy` (a weight-0
  reward function that also logs metrics), after which TRL's ``get_reward`` call reads the
  env's reward.

Modules, one concern each: :mod:`.envs` (sibling envs, built by the core's ``EnvFactory``;
``EnvFactory`` here is that class), :mod:`.data` (GRPO prompts),
:mod:`.generation` (tokens, ``generate``, stop cutting), :mod:`.rollout`, :mod:`.tool_env`,
:mod:`.rewards`, :mod:`.sft_data` (SFT transcripts from teacher episodes, balanced 50:50
search-required / search-free, tool results masked by TRL's ``assistant_only_loss``),
:mod:`.models`, :mod:`.trainers` and :mod:`.recipe` (:func:`train_recipe` runs the
``policies/*.json`` recipes ``sft``, ``grpo``, ``sft+grpo``).

This package is the only one that imports trl.
"""

from __future__ import annotations

from .data import to_dataset
from .envs import EnvFactory, EnvMaker, EnvSource, env_factory, env_siblings
from .generation import hf_generate
from .models import default_chat_template, load_model, make_tiny_model
from .recipe import TRL_VERSION, train_recipe
from .rewards import env_reward, episode_accuracy, episode_metrics
from .rollout import MMSearchRollout, make_rollout_func
from .sft_data import build_sft_dataset, record_teacher, trajectory_messages
from .tool_env import MMSearchToolEnv, make_tool_env_factory, prepare_tool_calling
from .trainers import evaluate_model, make_grpo_trainer, make_sft_trainer

__all__ = [
    "EnvFactory", "EnvMaker", "EnvSource", "MMSearchRollout", "MMSearchToolEnv", "TRL_VERSION", "build_sft_dataset",
    "default_chat_template", "env_factory", "env_reward", "env_siblings", "episode_accuracy", "episode_metrics",
    "evaluate_model", "hf_generate", "load_model", "make_grpo_trainer", "make_rollout_func", "make_sft_trainer",
    "make_tiny_model", "make_tool_env_factory", "prepare_tool_calling", "record_teacher", "to_dataset",
    "train_recipe", "trajectory_messages",
]
