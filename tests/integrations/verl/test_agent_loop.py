"""MMSearchAgentLoop, run as veRL runs it, with a stand-in for veRL's server manager."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

import asyncio
from pathlib import Path
from typing import Any

from mmsearch_gym.env_factory import EnvFactory, unwrap_env
from mmsearch_gym.integrations.verl.agent_loop import MMSearchAgentLoop
from mmsearch_gym.integrations.verl.reward import compute_score
from mmsearch_gym.reward import episode_reward
from mmsearch_gym.search.cache import CacheMiss

from .helpers import (
    ScriptedServer,
    TinyModelServer,
    loop_kwargs,
    trainer_config,
    world_rows,
)

ENV = {"id": "MMSearch-v0", "kwargs": {}}


def play(server: Any, tokenizer: Any, row: dict[str, Any], *, env: Any = ENV, response_length: int = 4096,
         reward_source: str = "env") -> Any:
    async def main() -> Any:  # veRL builds agent loops inside its running event loop
        loop = MMSearchAgentLoop(**loop_kwargs(trainer_config(response_length=response_length), server, tokenizer),
                                 env=env, reward_source=reward_source)
        return await loop.run({"temperature": 1.0, "top_p": 1.0}, raw_prompt=row["prompt"],
                              extra_info=row["extra_info"], tools_kwargs=row["extra_info"]["tools_kwargs"])
    return asyncio.run(main())


def spans(mask: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) runs of the mask."""
    runs, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            runs.append((mask[start], start, i))
            start = i
    return runs


def test_masks_cover_exactly_the_tool_results_and_reward_is_the_envs(tokenizer):
    tasks, rows = world_rows(1)
    task = tasks[0]
    replies = ["<reason>whose picture?</reason><search><img></search>",
               f"<reason>the results say</reason><answer>{task.answers[0]}</answer>"]
    server = ScriptedServer(tokenizer, replies)
    out = play(server, tokenizer, rows[0])

    turns = out.extra_fields["mmsearch_turns"]
    assert turns == replies
    assert out.reward_score == episode_reward(turns, task.answers) == pytest.approx(0.91)
    assert server.calls[0]["sampling_params"]["stop"] == ["</search>", "</text_search>", "</answer>"]
    assert server.calls[0]["prompt_ids"] == out.prompt_ids  # the first request is the prompt

    runs = spans(out.response_mask)
    assert [v for v, _, _ in runs] == [1, 0, 1]  # turn, tool result, turn
    generated = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for r in replies]
    (_, a0, a1), (_, t0, t1), (_, b0, b1) = runs
    assert out.response_ids[a0:a1] == generated[0] and out.response_ids[b0:b1] == generated[1]
    assert server.calls[1]["prompt_ids"] == out.prompt_ids + out.response_ids[:b0]

    env = unwrap_env(EnvFactory.from_json(ENV).build())  # the same turn stepped by a plain env
    env.reset(options={"task_id": task.id})
    info = env.step(replies[0])[4]
    result = "".join(b["text"] for b in info["messages"][-1]["content"] if b["type"] == "text")
    tool_text = tokenizer.decode(out.response_ids[t0:t1], skip_special_tokens=False)
    assert tool_text.lstrip("\n") == f"<|im_start|>user\n{result}<|im_end|>\n<|im_start|>assistant\n"


def test_reward_fn_route_gives_the_same_reward(tokenizer):
    tasks, rows = world_rows(2)
    replies = ["<reason>search</reason><text_search>flag with a red circle</text_search>",
               "<reason>guess</reason><answer>Japan</answer>"]
    env_route = play(ScriptedServer(tokenizer, replies), tokenizer, rows[1])
    fn_route = play(ScriptedServer(tokenizer, replies), tokenizer, rows[1], reward_source="reward_fn")
    assert fn_route.reward_score is None
    extra_info = {**rows[1]["extra_info"], **fn_route.extra_fields}  # what veRL's reward manager merges
    result = compute_score(rows[1]["data_source"], tokenizer.decode(fn_route.response_ids),
                           rows[1]["reward_model"]["ground_truth"], extra_info)
    assert result["score"] == env_route.reward_score == episode_reward(replies, tasks[1].answers)
    assert result == env_route.extra_fields["reward_extra_info"]


def test_tiny_model_rollouts_score_exactly_their_turns(tokenizer, tiny_lm):
    tasks, rows = world_rows(2)
    server = TinyModelServer(tiny_lm, tokenizer, max_new_tokens=16, seed=0)
    for row, task in zip(rows, tasks, strict=False):
        out = play(server, tokenizer, row, response_length=256)
        turns = out.extra_fields["mmsearch_turns"]
        assert 1 <= len(turns) <= 3
        assert out.reward_score == episode_reward(turns, task.answers)
        assert len(out.response_ids) == len(out.response_mask) <= 256
        generated = [tokenizer.decode([t for t, m in zip(out.response_ids[s:e], out.response_mask[s:e], strict=False)],
                                      skip_special_tokens=True) for v, s, e in spans(out.response_mask) if v == 1]
        assert generated == turns[:len(generated)]
    assert server.calls >= 2


def test_a_recorded_run_replays(tokenizer, tmp_path):
    tasks, rows = world_rows(1)
    replies = ["<reason>a</reason><search><img></search>", "<reason>b</reason><text_search>capital city</text_search>",
               f"<reason>c</reason><answer>{tasks[0].answers[0]}</answer>"]
    record = {"id": "MMSearch-v0", "kwargs": {"cache": {"mode": "record", "dir": str(tmp_path / "cache")}}}
    replay = {"id": "MMSearch-v0", "kwargs": {"cache": {"mode": "replay", "dir": str(tmp_path / "cache")}}}
    first = play(ScriptedServer(tokenizer, replies), tokenizer, rows[0], env=record)
    again = play(ScriptedServer(tokenizer, replies), tokenizer, rows[0], env=replay)
    assert again.response_ids == first.response_ids and again.response_mask == first.response_mask
    assert again.reward_score == first.reward_score == episode_reward(replies, tasks[0].answers)
    unrecorded = replies[:1] + ["<reason>b</reason><text_search>never asked</text_search>", replies[2]]
    with pytest.raises(CacheMiss, match="never asked"):  # strict replay answers only what was recorded
        play(ScriptedServer(tokenizer, unrecorded), tokenizer, rows[0], env=replay)


def test_a_vlm_sees_the_task_image_and_the_result_thumbnails():
    from mmsearch_gym.integrations import tiny_models

    template = (Path(__file__).parent / "qwen3_vl_chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = tiny_models.build_tokenizer([], chat_template=template, vocab_size=600, vision=True)
    processor = tiny_models.build_processor(tokenizer, chat_template=template, image_side=56)
    tasks, rows = world_rows(2)
    replies = ["<reason>look</reason><search><img></search>",
               f"<reason>ok</reason><answer>{tasks[1].answers[0]}</answer>"]
    server = ScriptedServer(tokenizer, replies)

    async def main() -> Any:
        kwargs = loop_kwargs(trainer_config(response_length=8192, prompt_length=4096), server, tokenizer)
        loop = MMSearchAgentLoop(**{**kwargs, "processor": processor}, env=ENV)
        return await loop.run({"temperature": 1.0}, raw_prompt=rows[1]["prompt"], extra_info=rows[1]["extra_info"])

    out = asyncio.run(main())
    env = unwrap_env(EnvFactory.from_json(ENV).build())
    env.reset(options={"task_id": tasks[1].id})
    thumbnails = [b for b in env.step(replies[0])[4]["messages"][-1]["content"] if b["type"] == "image"]
    images = out.multi_modal_data["images"]
    assert len(images) == 1 + len(thumbnails) and len(thumbnails) > 0
    assert images[0].size == tasks[1].load_image().size
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert pad in out.prompt_ids  # the task image, in the prompt
    masked = [t for t, m in zip(out.response_ids, out.response_mask, strict=False) if m == 0]
    assert pad in masked and pad not in [t for t, m in zip(out.response_ids, out.response_mask, strict=False) if m == 1]
    assert out.reward_score == episode_reward(replies, tasks[1].answers)
