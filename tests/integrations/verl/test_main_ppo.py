"""veRL's own trainer end to end on CPU: ``python -m verl.trainer.main_ppo`` with the shipped
``verl-tiny-cpu`` recipe, the ``hf`` rollout and the ``cpu`` platform, two GRPO steps, on both
routes: the ``mmsearch_agent`` loop, and veRL's ``ToolAgentLoop`` with our tools and
``compute_score`` (the reward computed in veRL's reward loop, from what the tools recorded)."""

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
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from mmsearch_gym.integrations import tiny_models
from mmsearch_gym.integrations.verl import recipe_path, write_parquet
from mmsearch_gym.integrations.verl.data import to_verl_rows
from mmsearch_gym.integrations.verl.tools import ImageSearchTool, TextSearchTool, tool_config
from mmsearch_gym.registration import resolve_tasks
from mmsearch_gym.reward import RewardSpec
from mmsearch_gym.tasks import TaskSet

from .helpers import TEMPLATE, imprint, scripted_episodes

pytestmark = pytest.mark.slow  # each runs veRL's trainer (Ray, 2 steps): about 2 min on 2 shared cores
REPO = Path(__file__).resolve().parents[3]
CALL = '<tool_call>{"name": "image_search", "arguments": {"bbox_2d": null}}</tool_call>'


def recording_env(root: Path) -> dict[str, Any]:
    return {"id": "MMSearch-Train-v0", "kwargs": {"top_k": 1, "cache": {"mode": "record", "dir": str(root / "cache")}}}


def tiny_run_inputs(root: Path, agent_name: str, first_turn: str) -> tuple[Path, Path, list[Any] | None]:
    """The recipe's inputs: a tiny Qwen2 shown 8 scripted episodes (``first_turn``, then the
    right answer) so that it searches and its rewards differ, and the tasks as veRL parquet."""
    tasks = TaskSet(list(resolve_tasks({"world": "train", "n": 5000, "seed": 0}))[:8], name="tiny-train")
    texts = [t.question for t in tasks] + [a for t in tasks for a in t.answers] + tiny_models.dialect_corpus()
    model_dir = tiny_models.save_tiny_model(root / "model", chat_template=TEMPLATE, texts=texts, vocab_size=600)
    tokenizer, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    env = {"id": "MMSearch-Train-v0", "kwargs": {"top_k": 1}}
    config = tool_config(env)["tools"][0]["config"]
    tools = [TextSearchTool(config), ImageSearchTool(config)] if agent_name == "tool_agent" else None
    episodes = scripted_episodes(tokenizer, to_verl_rows(tasks, agent_name=agent_name), lambda row: [
        first_turn, f"<reason>ok</reason><answer>{row['reward_model']['ground_truth'][0]}</answer>"], env, tools)
    imprint(model, episodes, steps=160)
    model.save_pretrained(model_dir)
    write_parquet(tasks, root / "data" / "train.parquet", agent_name=agent_name)
    write_parquet(TaskSet(list(tasks)[:2], name="tiny-val"), root / "data" / "test.parquet", agent_name=agent_name)
    return model_dir, root / "data", tools


def main_ppo(root: Path, model_dir: Path, data: Path, *overrides: str) -> tuple[str, list[dict[str, Any]]]:
    """Run veRL's trainer on the tiny recipe; its log and the rollouts it dumped (steps 1 and 2)."""
    recipe = recipe_path("verl-tiny-cpu.yaml")
    command = [sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(recipe.parent),
               "--config-name", recipe.stem, f"data.train_files={data / 'train.parquet'}",
               f"data.val_files={data / 'test.parquet'}", f"actor_rollout_ref.model.path={model_dir}",
               f"trainer.rollout_data_dir={root / 'rollouts'}", f"hydra.run.dir={root / 'hydra'}", *overrides]
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1", "VERL_USE_EXTERNAL_MODULES": "mmsearch_gym.integrations.verl.cpu",
               "VERL_PLATFORM": "cpu", "RAY_DEDUP_LOGS": "0"}
    run = subprocess.run(command, cwd=root, env=environ, capture_output=True, text=True, timeout=900)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-5000:]
    assert "training/global_step:2" in log  # two GRPO steps: rollout, reward, advantage, update
    dumps = [root / "rollouts" / f"{step}.jsonl" for step in (1, 2)]
    rows = [json.loads(line) for dump in dumps for line in dump.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 4  # steps x prompts x rollouts
    return log, rows


def grad_norms(log: str) -> list[float]:
    return [float(v) for v in re.findall(r"actor/grad_norm:(?:np\.float64\()?([0-9.eE+-]+)", log)]


def assert_env_rewards(rows: list[dict[str, Any]], cache: Path) -> None:
    """Each reward is the env's breakdown (score_episode), and searches went through its cache."""
    spec = RewardSpec.mmsearch_r1()
    for row in rows:
        assert row["score"] == pytest.approx((1 - spec.format_weight) * row["answer_score"]
                                             + spec.format_weight * row["format"])
    assert sum(row["searches"] for row in rows) > 0
    assert any(path.is_file() for path in cache.rglob("*"))


def test_main_ppo_trains_the_tiny_recipe_on_cpu(tmp_path):
    model_dir, data, _ = tiny_run_inputs(tmp_path, "mmsearch_agent", "<reason>look</reason><search><img></search>")
    loops = tmp_path / "agent-loops.yaml"
    loops.write_text(json.dumps([{"name": "mmsearch_agent", "_target_":
                                  "mmsearch_gym.integrations.verl.agent_loop.MMSearchAgentLoop",
                                  "env": recording_env(tmp_path), "reward_source": "env"}]), encoding="utf-8")
    log, rows = main_ppo(tmp_path, model_dir, data, f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}")
    norms = grad_norms(log)
    assert len(norms) == 2 and max(norms) > 0  # the rewards differed in a group: a real update
    assert_env_rewards(rows, tmp_path / "cache")
    assert len({row["score"] for row in rows}) > 1
    print(f"mmsearch_agent: grad_norm per step {norms}; rewards {sorted(row['score'] for row in rows)}; "
          f"searches {sum(row['searches'] for row in rows)}")


def test_main_ppo_tool_agent_route_scores_per_turn_in_verls_reward_loop(tmp_path):
    model_dir, data, _ = tiny_run_inputs(tmp_path, "tool_agent", CALL)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(tool_config(recording_env(tmp_path))), encoding="utf-8")
    log, rows = main_ppo(tmp_path, model_dir, data, "actor_rollout_ref.rollout.agent.default_agent_loop=tool_agent",
                         f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tools}",
                         f"actor_rollout_ref.rollout.agent.agent_loop_config_path={recipe_path('verl-agent-loops-tiny.yaml')}")
    # compute_score ran in veRL's reward loop (a Ray actor): its breakdown keys are in every dumped
    # rollout, and the searches it counts are the env's turns, carried by the tools' records.
    assert_env_rewards(rows, tmp_path / "cache")
    print(f"tool_agent: grad_norm per step {grad_norms(log)}; rewards {sorted(row['score'] for row in rows)}; "
          f"searches {sum(row['searches'] for row in rows)}")
