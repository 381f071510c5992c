"""The shipped veRL recipes compose with veRL's own defaults and name classes that load."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from verl.tools.tool_registry import initialize_tools_from_config

from mmsearch_gym.integrations.verl import recipe_path
from mmsearch_gym.integrations.verl.tools import ImageSearchTool, TextSearchTool


def load(name: str):
    with initialize_config_dir(config_dir=str(recipe_path(name).parent), version_base=None):
        return compose(config_name=name.removesuffix(".yaml"))


def test_the_7b_recipe_mirrors_mmsearch_r1():
    cfg = load("verl-qwen2.5-vl-7b.yaml")
    assert cfg.data.train_batch_size == 512 and cfg.actor_rollout_ref.rollout.n == 8
    assert cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001 and cfg.actor_rollout_ref.actor.use_kl_loss
    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop == "mmsearch_agent"
    assert cfg.actor_rollout_ref.rollout.response_length == 4096  # veRL's interpolation from data
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert cfg.actor_rollout_ref.actor.ppo_epochs == 1  # untouched veRL defaults are there too


def test_the_tiny_recipe_composes():
    cfg = load("verl-tiny-cpu.yaml")
    assert (cfg.data.train_batch_size, cfg.actor_rollout_ref.rollout.n) == (2, 4)
    assert (cfg.actor_rollout_ref.rollout.name, cfg.trainer.device) == ("hf", "cpu")  # see test_main_ppo
    env_vars = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env_vars.VERL_USE_EXTERNAL_MODULES == "mmsearch_gym.integrations.verl.cpu"


def test_agent_loop_and_tool_yamls_load_through_verl():
    (entry,) = OmegaConf.load(recipe_path("verl-agent-loops.yaml"))
    assert entry.name == "mmsearch_agent" and entry.env.id == "MMSearch-Train-v0"
    assert entry._target_ == "mmsearch_gym.integrations.verl.agent_loop.MMSearchAgentLoop"
    tools = initialize_tools_from_config(str(recipe_path("verl-tools.yaml")))
    assert [type(t) for t in tools] == [TextSearchTool, ImageSearchTool]
    assert [t.name for t in tools] == ["text_search", "image_search"]


def test_verl_loads_the_reward_function_the_recipe_names():
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(load("verl-qwen2.5-vl-7b.yaml"))
    turns = ["<reason>r</reason><search><img></search>", "<reason>r</reason><answer>Peru</answer>"]
    result = fn(data_source="x", solution_str="", ground_truth=["Peru"], extra_info={"mmsearch_turns": turns})
    assert result["score"] == pytest.approx(0.91)
