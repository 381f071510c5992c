"""TaskSet <-> veRL parquet rows, read back by veRL's own RLHFDataset."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

from omegaconf import OmegaConf
from verl.utils.dataset.rl_dataset import RLHFDataset

from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.integrations import tiny_models
from mmsearch_gym.integrations.verl.data import (
    from_verl_rows,
    read_parquet,
    write_parquet,
)
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import image_digest

from .helpers import TEMPLATE, world_rows


def test_rows_carry_the_env_prompt_answers_and_task_id():
    tasks, rows = world_rows(2)
    env = MMSearchEnv(tasks, MemoryBackend())
    _, info = env.reset(options={"task_id": tasks[1].id})
    row = rows[1]
    assert row["prompt"][0]["content"] == info["messages"][0]["content"][0]["text"]
    assert row["prompt"][1]["content"] == "<image>" + info["messages"][1]["content"][1]["text"]
    assert row["reward_model"] == {"style": "rule", "ground_truth": list(tasks[1].answers)}
    assert row["extra_info"]["task_id"] == tasks[1].id
    assert row["extra_info"]["tools_kwargs"]["image_search"]["create_kwargs"] == {"task_id": tasks[1].id}
    assert row["agent_name"] == "mmsearch_agent"


def test_parquet_round_trip_keeps_tasks(tmp_path):
    tasks, _ = world_rows(3)
    path = write_parquet(tasks, tmp_path / "train.parquet")
    back = read_parquet(path)
    assert [t.id for t in back] == [t.id for t in tasks]
    for a, b in zip(tasks, back, strict=False):
        assert (a.question, a.answers, a.category, a.split) == (b.question, b.answers, b.category, b.split)
        assert image_digest(a.load_image()) == image_digest(b.load_image())
        assert [o.to_json() for o in a.objects] == [o.to_json() for o in b.objects]
    with pytest.raises(ConfigError, match="exists"):
        write_parquet(tasks, path)
    assert read_parquet(path)[0].id == tasks[0].id  # the earlier file is intact


def test_bad_rows_are_data_errors():
    with pytest.raises(DataError, match="row 0"):
        from_verl_rows([{"prompt": []}])


def test_verl_rlhf_dataset_reads_the_parquet(tmp_path):
    tokenizer = tiny_models.build_tokenizer([], chat_template=TEMPLATE, vocab_size=600, vision=True)
    processor = tiny_models.build_processor(tokenizer, chat_template=TEMPLATE, image_side=56)
    tasks, _ = world_rows(2)
    path = write_parquet(tasks, tmp_path / "train.parquet")
    config = OmegaConf.create({"prompt_key": "prompt", "image_key": "images", "max_prompt_length": 4096,
                               "filter_overlong_prompts": False, "return_raw_chat": True})
    dataset = RLHFDataset(data_files=[str(path)], tokenizer=tokenizer, config=config,
                           processor=processor)
    item = dataset[1]
    assert item["extra_info"]["task_id"] == tasks[1].id
    assert item["tools_kwargs"]["text_search"]["create_kwargs"]["task_id"] == tasks[1].id
    user = item["raw_prompt"][1]["content"]
    assert [block["type"] for block in user] == ["image", "text"]
    assert image_digest(user[0]["image"].convert("RGB")) == image_digest(tasks[1].load_image())
    assert tasks[1].question in user[1]["text"]
