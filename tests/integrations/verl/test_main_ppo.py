"""veRL's own trainer end to end on CPU: ``python -m verl.trainer.main_ppo`` with the shipped
``verl-tiny-cpu`` recipe, the ``hf`` rollout and the ``cpu`` platform, two GRPO steps."""

from __future__ import annotations

import pytest

pytest.importorskip("verl.experimental.agent_loop.tool_agent_loop",
                    reason="veRL is not importable here; these tests run in the veRL venv (.ci/run)")

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from mmsearch_gym.integrations import tiny_models
from mmsearch_gym.integrations.verl import recipe_path, write_parquet
from mmsearch_gym.integrations.verl.data import to_verl_rows
from mmsearch_gym.registration import resolve_tasks
from mmsearch_gym.reward import RewardSpec
from mmsearch_gym.tasks import TaskSet

from .helpers import TEMPLATE, imprint, scripted_episodes

REPO = Path(__file__).resolve().parents[3]


def tiny_run_inputs(root: Path, env: dict) -> tuple[Path, Path]:
    """The recipe's inputs: a tiny Qwen2 that learned to search once then answer, and the data."""
    tasks = TaskSet(list(resolve_tasks({"world": "train", "n": 5000, "seed": 0}))[:8], name="tiny-train")
    texts = [t.question for t in tasks] + [a for t in tasks for a in t.answers] + tiny_models.dialect_corpus()
    model_dir = tiny_models.save_tiny_model(root / "model", chat_template=TEMPLATE, texts=texts, vocab_size=600)
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    rows = to_verl_rows(tasks)
    episodes = scripted_episodes(tokenizer, rows, lambda row: [
        "<reason>look</reason><search><img></search>",
        f"<reason>ok</reason><answer>{row['reward_model']['ground_truth'][0]}</answer>"], env)
    imprint(model, episodes, steps=120)
    model.save_pretrained(model_dir)
    data = root / "data"
    write_parquet(tasks, data / "train.parquet")
    write_parquet(TaskSet(list(tasks)[:2], name="tiny-val"), data / "test.parquet")
    return model_dir, data


def test_main_ppo_trains_the_tiny_recipe_on_cpu(tmp_path):
    cache = tmp_path / "cache"
    env = {"id": "MMSearch-Train-v0", "kwargs": {"top_k": 1, "cache": {"mode": "record", "dir": str(cache)}}}
    model_dir, data = tiny_run_inputs(tmp_path, {"id": "MMSearch-Train-v0", "kwargs": {"top_k": 1}})
    loops = tmp_path / "agent-loops.yaml"
    loops.write_text(json.dumps([{"name": "mmsearch_agent", "_target_":
                                  "mmsearch_gym.integrations.verl.agent_loop.MMSearchAgentLoop",
                                  "env": env, "reward_source": "env"}]), encoding="utf-8")
    dumps = tmp_path / "rollouts"
    recipes = recipe_path("verl-tiny-cpu.yaml").parent
    command = [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(recipes),
               "--config-name", "verl-tiny-cpu",
               f"data.train_files={data / 'train.parquet'}",
               f"data.val_files={data / 'test.parquet'}", f"actor_rollout_ref.model.path={model_dir}",
               f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
               f"trainer.rollout_data_dir={dumps}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "VERL_USE_EXTERNAL_MODULES": "mmsearch_gym.integrations.verl.cpu",
               "VERL_PLATFORM": "cpu", "RAY_DEDUP_LOGS": "0"}
    run = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=600)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]

    assert "training/global_step:2" in log  # two GRPO steps: rollout, reward, advantage, update
    grad_norms = [float(v) for v in re.findall(r"actor/grad_norm:(?:np\.float64\()?([0-9.eE+-]+)", log)]
    assert len(grad_norms) == 2 and max(grad_norms) > 0  # the rewards differed in a group: a real update

    rows = [json.loads(line) for step in (1, 2) for line in (dumps / f"{step}.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 2 * 4  # steps x prompts x rollouts
    spec = RewardSpec.mmsearch_r1()
    for row in rows:  # each reward is the env's breakdown (score_episode), as the agent loop reported it
        assert row["score"] == pytest.approx((1 - spec.format_weight) * row["answer_score"]
                                             + spec.format_weight * row["format"])
    assert sum(row["searches"] for row in rows) > 0 and len({row["score"] for row in rows}) > 1
    assert any(path.is_file() for path in cache.rglob("*"))  # the searches went through the env's cache
    print(f"grad_norm per step {grad_norms}; rewards {sorted(row['score'] for row in rows)}; "
          f"searches {sum(row['searches'] for row in rows)}")
