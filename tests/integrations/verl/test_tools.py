"""The veRL tools, run by veRL's own ToolAgentLoop (hermes tool calls) and called directly."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

import asyncio
import json
from typing import Any

import numpy as np
import torch
from verl import DataProto
from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager
from verl.tools.base_tool import BaseTool

from mmsearch_gym.actions import ImageSearch, Region, get_dialect
from mmsearch_gym.env_factory import EnvFactory, unwrap_env
from mmsearch_gym.integrations.verl.reward import compute_score
from mmsearch_gym.integrations.verl.tools import (
    ImageSearchTool,
    TextSearchTool,
    tool_config,
)
from mmsearch_gym.reward import RewardSpec, episode_reward

from .helpers import ScriptedServer, loop_kwargs, trainer_config, world_rows

ENV = {"id": "MMSearch-Deep-v0", "kwargs": {}}


def call(name: str, arguments: dict[str, Any]) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": arguments}) + "</tool_call>"


def env_result(task_id: str, turns: list[str]) -> list[str]:
    """What a plain env answers to the same turns, in order."""
    env = unwrap_env(EnvFactory.from_json(ENV).build())
    env.reset(options={"task_id": task_id})
    return [env.step(turn)[0]["text"] for turn in turns]


def tools() -> list[BaseTool]:
    config = tool_config(ENV)["tools"][0]["config"]
    return [TextSearchTool(config), ImageSearchTool(config)]


def test_tool_config_names_the_tool_classes():
    declared = tool_config(ENV)
    assert [t["class_name"].rsplit(".", 1)[1] for t in declared["tools"]] == ["TextSearchTool", "ImageSearchTool"]
    assert all(t["config"]["type"] == "native" and t["config"]["env"] == ENV for t in declared["tools"])
    schema = ImageSearchTool(declared["tools"][1]["config"]).get_openai_tool_schema()
    assert set(schema.function.parameters.properties) == {"bbox_2d", "expression"}


def test_verl_tool_agent_loop_reaches_the_env_backend_and_budgets(tokenizer):
    tasks, rows = world_rows(2, dialect="deepmmsearch-r1")
    row = rows[1]
    replies = [call("image_search", {"bbox_2d": None}), call("text_search", {"query": "flag of Slovakia"}),
               call("image_search", {"bbox_2d": None}), "<answer>Slovakia</answer>"]
    server = ScriptedServer(tokenizer, replies)

    async def main() -> Any:
        loop = ToolAgentLoop(**loop_kwargs(trainer_config(response_length=8192), server, tokenizer, tools()))
        return await loop.run({"temperature": 1.0}, raw_prompt=[{"role": "user", "content": "q"}],
                              extra_info=row["extra_info"], tools_kwargs=row["extra_info"]["tools_kwargs"])

    out = asyncio.run(main())
    expected = env_result(tasks[1].id, ["<img_search><img></img_search>",
                                        "<text_search>flag of Slovakia</text_search>",
                                        "<img_search><img></img_search>"])
    text = tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask, strict=False) if m == 0])
    responses = [part.split("\n</tool_response>")[0] for part in text.split("<tool_response>\n")[1:]]
    assert responses == expected  # the env's own results, in order, masked out of the loss
    assert "budget" in expected[2]  # the env's image-search budget (1) applies to veRL's calls
    generated = tokenizer.decode([t for t, m in zip(out.response_ids, out.response_mask, strict=False) if m == 1])
    assert "<tool_response>" not in generated and generated.count("<tool_call>") == 3


def run_tool_loop(tokenizer: Any, row: dict[str, Any], replies: list[str], max_assistant_turns: int = 4) -> Any:
    config = trainer_config(response_length=8192)
    config.actor_rollout_ref.rollout.multi_turn.max_assistant_turns = max_assistant_turns

    async def main() -> Any:
        loop = ToolAgentLoop(**loop_kwargs(config, ScriptedServer(tokenizer, replies), tokenizer, tools()))
        return await loop.run({"temperature": 1.0}, raw_prompt=row["prompt"][1:],
                              extra_info=row["extra_info"], tools_kwargs=row["extra_info"]["tools_kwargs"])

    return asyncio.run(main())


def verl_reward(tokenizer: Any, row: dict[str, Any], out: Any) -> dict[str, Any]:
    """veRL's own reward manager on the loop's output (what AgentLoopWorker hands it)."""
    prompt, response = torch.tensor([out.prompt_ids]), torch.tensor([out.response_ids])
    data = DataProto.from_dict(
        tensors={"prompts": prompt, "responses": response,
                 "attention_mask": torch.ones(1, prompt.shape[1] + response.shape[1], dtype=torch.long)},
        non_tensors={"data_source": np.array([row["data_source"]], dtype=object),
                     "reward_model": np.array([row["reward_model"]], dtype=object),
                     "extra_info": np.array([dict(row["extra_info"])], dtype=object),
                     "tool_extra_fields": np.array([out.extra_fields], dtype=object),
                     "__num_turns__": np.array([out.num_turns])})

    async def main() -> dict[str, Any]:
        return await NaiveRewardManager(None, tokenizer, compute_score).run_single(data)

    return asyncio.run(main())


def test_tool_agent_loop_reward_is_the_envs_score_of_its_turns(tokenizer):
    tasks, rows = world_rows(2, dialect="deepmmsearch-r1")
    task, row = tasks[1], rows[1]
    final = "<reason>the white, blue and red flag</reason><answer>Slovakia</answer>"
    replies = [call("image_search", {"bbox_2d": None}), call("text_search", {"query": "flag of Slovakia"}), final]
    out = run_tool_loop(tokenizer, row, replies)
    result = verl_reward(tokenizer, row, out)

    env_turns = ["<reason></reason><img_search><img></img_search>",
                 "<reason></reason><text_search>flag of Slovakia</text_search>"]
    assert out.extra_fields["mmsearch_turns"] == env_turns  # what the tools stepped
    env = unwrap_env(EnvFactory.from_json(ENV).build())  # a plain env playing the same turns
    env.reset(options={"task_id": task.id})
    for turn in [*env_turns, final]:
        info = env.step(turn)[4]
    assert result["reward_score"] == info["reward_breakdown"].reward == 1.0
    assert result["reward_extra_info"]["format"] == 1.0 and result["reward_extra_info"]["searches"] == 2.0
    spec = RewardSpec.deepmmsearch_r1()
    whole = episode_reward([tokenizer.decode(out.response_ids, skip_special_tokens=True)], task.answers, spec)
    assert whole == pytest.approx(0.9) != result["reward_score"]  # the old one-turn scoring

    answered_at_once = run_tool_loop(tokenizer, row, [final])  # no tool call: the response is the turn
    assert verl_reward(tokenizer, row, answered_at_once)["reward_score"] == episode_reward([final], task.answers, spec)


def test_a_final_turn_cut_by_verl_limits_is_not_scored(tokenizer):
    tasks, rows = world_rows(2, dialect="deepmmsearch-r1")
    replies = [call("image_search", {"bbox_2d": None}), "<reason>r</reason><answer>Slovakia</answer>"]
    out = run_tool_loop(tokenizer, rows[1], replies, max_assistant_turns=2)  # veRL stops before parsing it
    turns = ["<reason></reason><img_search><img></img_search>"]
    assert verl_reward(tokenizer, rows[1], out)["reward_score"] == episode_reward(
        turns, tasks[1].answers, RewardSpec.deepmmsearch_r1()) == 0.0


def test_direct_calls_cover_box_expression_and_invalid_arguments():
    tasks, _ = world_rows(4)
    task = tasks[3]  # a crop task with three flags
    image_tool = ImageSearchTool(tool_config(ENV)["tools"][1]["config"])

    async def run(parameters: dict[str, Any]) -> str:
        instance, _ = await image_tool.create(create_kwargs={"task_id": task.id})
        response, reward, _ = await image_tool.execute(instance, parameters)
        assert reward == 0.0
        await image_tool.release(instance)
        return response.text

    box = [float(v) for v in task.objects[0].box]
    crop_turn = get_dialect("deepmmsearch-r1").format(ImageSearch(Region.from_box(*box)))
    by_box = asyncio.run(run({"bbox_2d": box}))
    assert by_box == env_result(task.id, [crop_turn])[0] and by_box.startswith("<information>")
    by_expression = asyncio.run(run({"expression": "the largest flag"}))
    assert by_expression == env_result(task.id, ["<img_search>the largest flag</img_search>"])[0]
    assert by_expression.startswith("<information>")
    assert "bbox_2d" in asyncio.run(run({"bbox_2d": [1, 2]}))
    assert "not both" in asyncio.run(run({"bbox_2d": box, "expression": "x"}))
