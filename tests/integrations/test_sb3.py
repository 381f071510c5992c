"""Tests of the SB3 decision wrapper, SB3Policy and train_recipe (PPO / DQN)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("stable_baselines3")

from fixture_world import play_policy
from gymnasium.utils.env_checker import check_env as gymnasium_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from mmsearch_gym.actions import Answer, ImageSearch, Invalid, TextSearch, get_dialect
from mmsearch_gym.commands.train import load_recipe
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.sb3 import (
    ACTION_ANSWER,
    ACTION_IMAGE,
    ACTION_TEXT,
    CROP_TARGETS,
    DecisionConfig,
    SB3Policy,
    SearchDecisionEnv,
    hashed_bag,
    train_recipe,
    window_box,
)
from mmsearch_gym.policies import EpisodeView, make_policy
from mmsearch_gym.reward import score_episode
from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.search.image_features import FEATURE_DIM
from mmsearch_gym.tasks import TaskSet
from mmsearch_gym.world.reader import EvidenceReader

DIALECTS = ("mmsearch-r1", "deepmmsearch-r1", "tool-json")
CONFIG = DecisionConfig()
NAMES = CONFIG.action_names
ANSWER, IMAGE, TEXT = NAMES.index(ACTION_ANSWER), NAMES.index(ACTION_IMAGE), NAMES.index(ACTION_TEXT)
CROP_TOP_RIGHT = NAMES.index("crop:top right")

actions_st = st.lists(st.integers(0, len(NAMES) - 1), min_size=1, max_size=12)


def wrapper(tasks: TaskSet, backend: MemoryBackend, dialect: str = "mmsearch-r1", **kwargs) -> SearchDecisionEnv:
    return SearchDecisionEnv(MMSearchEnv(tasks, backend, dialect=dialect, **kwargs), reader=EvidenceReader())


def play(env: SearchDecisionEnv, actions: list[int], *, seed: int | None = None,
         options: dict | None = None) -> list[tuple]:
    """Obs, reward, terminated, truncated and action text of every step until the episode ends."""
    obs, info = env.reset(seed=seed, options=options)
    out = [(obs, None, False, False, None)]
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        out.append((obs, reward, terminated, truncated, info["action_text"]))
        if terminated or truncated:
            break
    return out


# ------------------------------------------------------------------ spaces and checks -------


def test_spaces_and_action_names(tiny_tasks, memory_backend) -> None:
    env = wrapper(tiny_tasks, memory_backend)
    assert env.action_space.n == len(NAMES) == 2 + len(CROP_TARGETS) + 1
    assert NAMES[0] == ACTION_ANSWER and NAMES[1] == ACTION_IMAGE and NAMES[-1] == ACTION_TEXT
    assert env.observation_space.shape == (CONFIG.observation_dim,)
    assert env.observation_space.dtype == np.float32
    assert sum(CONFIG.block_sizes.values()) == CONFIG.observation_dim
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    for action in (IMAGE, TEXT, ANSWER):
        obs, *_ = env.step(action)
        assert env.observation_space.contains(obs)
    for kind, size in (("layout", 48), ("descriptor", FEATURE_DIM), ("none", 0)):
        config = DecisionConfig(image_features=kind)
        env = SearchDecisionEnv(MMSearchEnv(tiny_tasks, memory_backend), config=config, reader=EvidenceReader())
        assert config.block_sizes["image"] == size
        assert env.reset(seed=0)[0].shape == (config.observation_dim,)
    # the limits come from the wrapped env
    deep = wrapper(tiny_tasks, memory_backend, dialect="deepmmsearch-r1")
    assert deep.config.max_turns == 11 and deep.config.text_search_budget == 11


def test_both_env_checkers_pass(tiny_tasks, memory_backend) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no spec, cannot test render modes" and the like
        sb3_check_env(wrapper(tiny_tasks, memory_backend), warn=True)
        gymnasium_check_env(wrapper(tiny_tasks, memory_backend))


def test_rejects_bad_inputs(tiny_tasks, memory_backend) -> None:
    import gymnasium as gym

    with pytest.raises(ConfigError, match="MMSearchEnv"):
        SearchDecisionEnv(gym.make("CartPole-v1"))
    env = wrapper(tiny_tasks, memory_backend)
    env.reset(seed=0)
    with pytest.raises(ConfigError, match="outside"):
        env.step(len(NAMES))
    with pytest.raises(ConfigError, match="unknown decision config"):
        DecisionConfig.from_json({"question_dims": 3})
    with pytest.raises(ConfigError, match="image_features"):
        DecisionConfig(image_features="pixels")  # type: ignore[arg-type]


# ------------------------------------------------------------------ determinism -------------


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), actions=actions_st)
def test_same_seed_same_observations(tiny_tasks, memory_backend, seed: int, actions: list[int]) -> None:
    a = play(wrapper(tiny_tasks, memory_backend), actions, seed=seed)
    b = play(wrapper(tiny_tasks, memory_backend), actions, seed=seed)
    assert len(a) == len(b)
    for (obs_a, *rest_a), (obs_b, *rest_b) in zip(a, b, strict=False):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert rest_a == rest_b


def test_decision_env_is_a_gymnasium_wrapper_and_vectorises(tiny_tasks, memory_backend) -> None:
    import gymnasium as gym
    from stable_baselines3.common.monitor import Monitor

    from mmsearch_gym.integrations.sb3 import make_vec_env

    env = wrapper(tiny_tasks, memory_backend)
    assert isinstance(env, gym.Wrapper) and isinstance(env.unwrapped, MMSearchEnv)
    assert env.mmsearch_env is env.unwrapped
    venv = make_vec_env(lambda: wrapper(tiny_tasks, memory_backend), 2, seed=3)
    try:
        assert venv.num_envs == 2 and all(isinstance(e, Monitor) for e in venv.envs)
        first = venv.reset()
        venv.seed(3)
        assert np.array_equal(first, venv.reset())  # seeded: the same tasks again
    finally:
        venv.close()


def test_hashed_bag_is_stable() -> None:
    # blake2b buckets, not hash(): identical in every process
    bag = hashed_bag("Which country's flag is shown at the top right?", 128)
    assert bag.dtype == np.float32 and set(np.unique(bag)) <= {0.0, 1.0}
    assert np.flatnonzero(bag).tolist() == np.flatnonzero(
        hashed_bag("which COUNTRY's  flag is shown at the top right", 128)).tolist()
    assert not np.array_equal(bag, hashed_bag("How many flags are in this picture?", 128))


# ------------------------------------------------------------------ reward passthrough ------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 2), actions=actions_st, dialect=st.sampled_from(DIALECTS))
def test_reward_is_the_env_reward(tiny_tasks, memory_backend, index: int, actions: list[int], dialect: str) -> None:
    """Step a bare env with the wrapper's action texts: rewards and ends must agree exactly."""
    env = wrapper(tiny_tasks, memory_backend, dialect=dialect)
    bare = MMSearchEnv(tiny_tasks, memory_backend, dialect=dialect)
    steps = play(env, actions, options={"task_index": index})
    bare.reset(options={"task_index": index})
    for _, reward, terminated, truncated, text in steps[1:]:
        _, bare_reward, bare_terminated, bare_truncated, _ = bare.step(text)
        assert reward == bare_reward and truncated == bare_truncated
        # running out of turns or budget ends the decision problem for good (no bootstrapping)
        assert terminated == (bare_terminated or bare_truncated)
    if steps[-1][2] or steps[-1][3]:
        assert steps[-1][1] == score_episode(bare.turns, tiny_tasks[index].answers, bare.reward_spec,
                                             tiny_tasks[index].question).reward


def test_decisions_become_the_right_actions(tiny_tasks, memory_backend) -> None:
    env = wrapper(tiny_tasks, memory_backend)
    dialect = get_dialect("mmsearch-r1")
    # search-free: answer at once from scene perception -> full reward
    [*_, (_, reward, terminated, _, text)] = play(env, [ANSWER], options={"task_index": 2})
    assert terminated and reward == pytest.approx(1.0) and dialect.parse(text) == Answer("1")
    # crop: the grounder snaps "top right" to the annotated flag box
    env.reset(options={"task_index": 0})
    _, _, _, _, info = env.step(CROP_TOP_RIGHT)
    assert info["action"] == ImageSearch(info["action"].region) and info["box"] == (200, 20, 300, 90)
    _, reward, terminated, _, info = env.step(ANSWER)
    assert terminated and info["reward_breakdown"].answer == "France" and reward == pytest.approx(0.91)
    # image, then a text query built from the identified entity, then the fact
    [_, _, (_, _, _, _, t2), (_, reward, _, _, t3)] = play(
        env, [IMAGE, TEXT, ANSWER], options={"task_index": 1})
    assert dialect.parse(t2) == TextSearch("France Capital") and dialect.parse(t3) == Answer("Paris")
    assert reward == pytest.approx(0.91)


def test_crop_without_grounder_uses_a_window(tiny_tasks, memory_backend) -> None:
    env = SearchDecisionEnv(MMSearchEnv(tiny_tasks, memory_backend), reader=EvidenceReader(), grounder=None)
    env.reset(options={"task_index": 0})
    _, _, _, _, info = env.step(CROP_TOP_RIGHT)
    assert info["box"] == window_box("top right", (320, 240)) == (160, 0, 320, 120)
    assert window_box("center", (320, 240)) == (80, 60, 240, 180)


# ------------------------------------------------------------------ no leak -----------------


def _relabelled(tasks: TaskSet) -> TaskSet:
    """The same tasks with other gold answers and other categories."""
    cats = ["search_free", "text_only", "crop"]
    return TaskSet([dataclasses.replace(t, answers=(f"wrong {i}",), category=cats[i])
                    for i, t in enumerate(tasks)], name="relabelled")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 2), actions=actions_st)
def test_observation_ignores_answers_and_category(tiny_tasks, memory_backend, index: int,
                                                 actions: list[int]) -> None:
    """Every observation feature comes from the question, pixels, hits and counters: two task
    sets that differ only in gold answers and categories give identical observations."""
    a = play(wrapper(tiny_tasks, memory_backend), actions, options={"task_index": index})
    b = play(wrapper(_relabelled(tiny_tasks), memory_backend), actions, options={"task_index": index})
    assert len(a) == len(b)
    for (obs_a, _, _, _, text_a), (obs_b, _, _, _, text_b) in zip(a, b, strict=False):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert text_a == text_b  # the actions (and answer texts) do not depend on them either


# ------------------------------------------------------------------ SB3Policy ---------------


_TRAINED: dict[str, tuple[Path, dict]] = {}


@pytest.fixture
def trained(tiny_tasks, memory_backend, tmp_path_factory) -> tuple[Path, dict]:
    """A few hundred PPO steps on the tiny fixture tasks through train_recipe (trained once)."""
    if "ppo" not in _TRAINED:
        out = tmp_path_factory.mktemp("ppo")
        recipe = {"trainer": "ppo", "name": "ppo-tiny",
                  "env": {"tasks": tiny_tasks, "backend": memory_backend},
                  "decision": {"question_dim": 32, "title_dim": 8}, "n_envs": 2, "seed": 0,
                  "total_timesteps": 512, "progress": False,
                  "ppo": {"n_steps": 64, "batch_size": 64, "n_epochs": 2, "learning_rate": 1e-3,
                          "gamma": 1.0, "policy_kwargs": {"net_arch": [32, 32]}},
                  "eval": {"tasks": tiny_tasks, "episodes": 3}}
        _TRAINED["ppo"] = (out, train_recipe(recipe, output_dir=out))
    return _TRAINED["ppo"]


def test_short_ppo_run_saves_and_summarises(trained) -> None:
    out, summary = trained
    assert summary["trainer"] == "ppo" and summary["total_timesteps"] >= 512
    for name in ("model.zip", "model.json", "model.npz", "summary.json"):
        assert (out / name).is_file()
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    meta = json.loads((out / "model.json").read_text())
    assert meta["algorithm"] == "ppo" and meta["decision"]["question_dim"] == 32
    assert summary["eval"]["episodes"] == 3
    assert 0.0 <= summary["eval"]["mean_reward"] <= 1.0
    assert set(summary["eval"]["per_category"]) == {"crop", "image_then_text", "search_free"}


def _play_policy(policy, tasks, backend, index: int, dialect: str = "mmsearch-r1"):
    view, reward, _ = play_policy(MMSearchEnv(tasks, backend, dialect=dialect), policy, index)
    return view, reward


@pytest.mark.parametrize("which", ["dir", "zip", "json", "zip-only"])
def test_saved_model_loads_as_policy_and_acts(trained, tiny_tasks, memory_backend, tmp_path,
                                              which: str) -> None:
    out, _ = trained
    if which == "zip-only":  # SB3's own file, no export beside it
        (tmp_path / "model.zip").write_bytes((out / "model.zip").read_bytes())
        (tmp_path / "model.json").write_text((out / "model.json").read_text())
    path = {"dir": out, "zip": out / "model.zip", "json": out / "model.json",
            "zip-only": tmp_path / "model.zip"}[which]
    policy = SB3Policy.load(path, tasks=tiny_tasks, reader=EvidenceReader())
    reference = SB3Policy.load(out, tasks=tiny_tasks, reader=EvidenceReader())
    for dialect in DIALECTS:
        for index in range(3):
            view, reward = _play_policy(policy, tiny_tasks, memory_backend, index, dialect)
            assert 0.0 <= reward <= 1.0 and 1 <= len(view.steps) <= 3
            assert not any(isinstance(s.action, Invalid) for s in view.steps)
            assert [s.text for s in view.steps] == [
                s.text for s in _play_policy(reference, tiny_tasks, memory_backend, index, dialect)[0].steps]


def test_policy_rebuilds_the_wrapper_observation(trained, tiny_tasks, memory_backend) -> None:
    """Playing through EpisodeView gives, step by step, the wrapper's observations and texts."""
    out, _ = trained
    policy = SB3Policy.load(out, tasks=tiny_tasks, reader=EvidenceReader())
    for index in range(3):
        env = SearchDecisionEnv(MMSearchEnv(tiny_tasks, memory_backend), config=policy.config,
                                reader=EvidenceReader())
        bare = MMSearchEnv(tiny_tasks, memory_backend)
        obs, _ = env.reset(options={"task_index": index})
        bare_obs, info = bare.reset(options={"task_index": index})
        view = EpisodeView.start(bare_obs, info, dialect=bare.dialect)
        while True:
            np.testing.assert_array_equal(policy.observe(view), obs)
            [decision] = policy.decide([view])
            [text] = policy.act([view])
            obs, reward, terminated, truncated, winfo = env.step(decision)
            assert winfo["action_text"] == text
            bare_obs, bare_reward, *_, info = bare.step(text)
            assert bare_reward == reward
            view.record(text, bare_obs, info)
            if terminated or truncated:
                break


def test_batched_act_matches_single(trained, tiny_tasks, memory_backend) -> None:
    out, _ = trained
    policy = SB3Policy.load(out, tasks=tiny_tasks, reader=EvidenceReader())
    env = MMSearchEnv(tiny_tasks, memory_backend)
    views = []
    for i in range(3):
        obs, info = env.reset(options={"task_index": i})
        views.append(EpisodeView.start(obs, info, dialect=env.dialect))
    assert policy.act(views) == [policy.act([v])[0] for v in views]


def test_make_policy_builds_sb3(trained, tiny_tasks) -> None:
    out, _ = trained
    policy = make_policy(f"sb3:{out / 'model.zip'}", tasks=tiny_tasks, reader=EvidenceReader())
    assert isinstance(policy, SB3Policy)
    with pytest.raises(ConfigError, match="no SB3 policy"):
        SB3Policy.load(out / "missing")


def test_short_dqn_run(tmp_path, tiny_tasks, memory_backend) -> None:
    recipe = {"trainer": "dqn", "env": {"tasks": tiny_tasks, "backend": memory_backend},
              "decision": {"question_dim": 16, "title_dim": 4}, "n_envs": 1, "total_timesteps": 200,
              "progress": False, "dqn": {"learning_starts": 50, "buffer_size": 500, "batch_size": 16,
                                          "train_freq": 4, "policy_kwargs": {"net_arch": [16]}}}
    summary = train_recipe(recipe, output_dir=tmp_path)
    assert summary["trainer"] == "dqn"
    policy = SB3Policy.load(tmp_path, tasks=tiny_tasks, reader=EvidenceReader())
    view, reward = _play_policy(policy, tiny_tasks, memory_backend, 0)
    assert 0.0 <= reward <= 1.0 and view.steps


def test_recipe_errors(tmp_path, tiny_tasks, memory_backend) -> None:
    base = {"trainer": "ppo", "env": {"tasks": tiny_tasks, "backend": memory_backend}, "total_timesteps": 8}
    with pytest.raises(ConfigError, match="unknown recipe keys"):
        train_recipe({**base, "bogus": 1}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown env keys"):
        train_recipe({**base, "env": {"tasks": tiny_tasks, "colour": 1}}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="total_timesteps"):
        train_recipe({**base, "total_timesteps": 0}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="'ppo' or 'dqn'"):
        train_recipe({**base, "trainer": "grpo"}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="bad ppo settings"):
        train_recipe({**base, "ppo": {"n_stepz": 3}}, output_dir=tmp_path)


@pytest.mark.parametrize("name", ["ppo-world", "dqn-world"])
def test_shipped_recipes_are_well_formed(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe["trainer"] in ("ppo", "dqn") and recipe["description"]
    DecisionConfig.from_json(recipe.get("decision") or {})
    assert recipe["total_timesteps"] > 0


# ------------------------------------------------------------------ the built-in world ------


@pytest.fixture(scope="module")
def world():
    from mmsearch_gym.world import load_tasks
    from mmsearch_gym.world.engine import WorldSearchEngine

    return load_tasks("test", n=15), WorldSearchEngine.load()


def _world_env(tasks: TaskSet, engine) -> SearchDecisionEnv:
    from mmsearch_gym.grounding import AnnotationGrounder

    return SearchDecisionEnv(MMSearchEnv(tasks, engine, grounder=AnnotationGrounder(), image_size=(32, 32)))


def _decisions_for_plan(env: SearchDecisionEnv, index: int) -> list[int]:
    """The decisions that carry out a task's oracle plan (a crop: the target grounding to its box)."""
    task = env.unwrapped.tasks[index]
    out = []
    for step in task.meta["oracle_plan"]:
        if step["tool"] == "answer":
            out.append(ANSWER)
        elif step["tool"] == "text_search":
            out.append(TEXT)
        elif step.get("box") is None:
            out.append(IMAGE)
        else:
            size = task.load_image().size
            [target] = [t for t in env.config.crop_targets
                        if env.core.crop_box(t, task, size) == tuple(step["box"])][:1]
            out.append(NAMES.index(f"crop:{target}"))
    return out


def test_world_tasks_are_solvable_with_the_decisions(world) -> None:
    """Every category of the world can be answered through the wrapper's discrete actions."""
    tasks, engine = world
    env = _world_env(tasks, engine)
    seen = set()
    for index, task in enumerate(tasks):
        steps = play(env, _decisions_for_plan(env, index), options={"task_index": index})
        reward = steps[-1][1]
        assert steps[-1][2], task.id
        assert reward == pytest.approx(1.0 if task.category == "search_free" else 0.91), (task.id, steps[-1][4])
        seen.add(task.category)
    assert seen == {"search_free", "image_search", "image_then_text", "crop", "text_only"}


def test_world_observation_ignores_answers_and_category(world) -> None:
    tasks, engine = world
    cats = ["search_free", "image_search", "image_then_text", "crop", "text_only"]
    relabelled = TaskSet([dataclasses.replace(t, answers=("nope",), category=cats[(i + 2) % 5])
                          for i, t in enumerate(tasks)], name="relabelled")
    a_env, b_env = _world_env(tasks, engine), _world_env(relabelled, engine)
    for index in range(len(tasks)):
        for plan in ([IMAGE, TEXT, ANSWER], [NAMES.index("crop:largest"), ANSWER], [TEXT, TEXT, ANSWER]):
            a = play(a_env, plan, options={"task_index": index})
            b = play(b_env, plan, options={"task_index": index})
            for (obs_a, *_), (obs_b, *_) in zip(a, b, strict=True):
                np.testing.assert_array_equal(obs_a, obs_b)


def test_world_env_checkers_pass(world) -> None:
    tasks, engine = world
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sb3_check_env(_world_env(tasks, engine), warn=True)
        gymnasium_check_env(_world_env(tasks, engine))


def test_cli_train_runs_a_tiny_world_recipe(tmp_path, capsys) -> None:
    from mmsearch_gym.cli import main

    code = main(["train", "ppo-world", "-o", str(tmp_path), "--set", "env.tasks.n=10",
                 "--set", "total_timesteps=64", "--set", "n_envs=2", "--set", "ppo.n_steps=32",
                 "--set", "ppo.batch_size=32", "--set", "progress=false", "--set", "eval.episodes=5"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tasks"]["count"] == 10 and summary["eval"]["episodes"] == 5
    policy = SB3Policy.load(tmp_path)
    assert policy.config.max_turns == 3 and len(policy.config.action_names) == len(NAMES)
