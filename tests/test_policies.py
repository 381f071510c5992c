"""Tests of the Policy protocol, EpisodeView bookkeeping, the scripted baselines and make_policy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fixture_world import CapitalReader, planned, play_policy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmsearch_gym.actions import (
    UNABLE_TO_ANSWER,
    Answer,
    ImageSearch,
    Invalid,
    TextSearch,
    get_dialect,
)
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.grounding import AnnotationGrounder
from mmsearch_gym.policies import (
    POLICY_SPECS,
    DirectPolicy,
    EpisodeView,
    OraclePolicy,
    Policy,
    RAGPolicy,
    RandomPolicy,
    Step,
    make_policy,
    text_only_content,
)
from mmsearch_gym.tasks import Task, TaskSet

DIALECTS = ("mmsearch-r1", "deepmmsearch-r1", "tool-json")



# ---------------------------------------------------------------------------------------------
# EpisodeView
# ---------------------------------------------------------------------------------------------


def test_episode_view_tracks_the_episode(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    obs, info = env.reset(options={"task_index": 1})
    view = EpisodeView.start(obs, info, dialect=env.dialect)
    assert view.task_id == "t1" and view.question == tiny_tasks[1].question
    assert view.image.size == (320, 240)  # the original image, not the 224x224 observation
    assert view.dialect is get_dialect("mmsearch-r1") and view.turn == 0 and view.hits == []
    assert view.messages[0]["role"] == "system" and view.category == "image_then_text"

    text = "<reason>look</reason><search><img></search>"
    obs, _, _, _, info = env.step(text)
    step = view.record(text, obs, info)
    assert isinstance(step, Step) and step.action == ImageSearch() and step.text == text
    assert step.hits and step.hits[0].title == "Flag of France" and step.box is None
    assert "<information>" in step.observation_text and view.observation is not obs
    assert view.turn == 1 and view.hits == step.hits and view.messages == info["messages"]
    assert view.messages[-1]["role"] == "user"


def test_episode_view_start_needs_reset_info(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    obs, info = env.reset(options={"task_index": 0})
    with pytest.raises(ConfigError, match="task_id"):
        EpisodeView.start(obs, {"messages": []}, dialect="mmsearch-r1")
    with pytest.raises(ConfigError, match="image"):
        EpisodeView.start(obs, {**info, "messages": []}, dialect="mmsearch-r1")
    with pytest.raises(ConfigError, match="dialect"):
        EpisodeView.start(obs, info, dialect="nope")


def test_importing_policies_does_not_import_torch() -> None:
    code = "import sys, mmsearch_gym.policies; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# Scripted baselines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [DirectPolicy, RAGPolicy, OraclePolicy, RandomPolicy])
def test_scripted_policies_satisfy_the_protocol(cls, tiny_tasks) -> None:
    policy = cls(tiny_tasks, reader=CapitalReader())
    assert isinstance(policy, Policy) and policy.name in ("direct", "rag", "oracle", "random")


def test_direct_answers_without_searching(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    policy = DirectPolicy(tiny_tasks, reader=CapitalReader())
    answers = []
    for i in range(3):
        view, reward, info = play_policy(env, policy, i)
        assert len(view.steps) == 1 and isinstance(view.steps[0].action, Answer)
        assert info["reward_breakdown"].format == 1.0
        answers.append(view.steps[0].action.text)
    assert answers == [UNABLE_TO_ANSWER, UNABLE_TO_ANSWER, "1"]  # perception only for search_free
    assert memory_backend.calls == []
    view, reward, _ = play_policy(env, policy, 2)
    assert reward == pytest.approx(1.0)  # correct, no search, format ok


def test_direct_without_tasks_cannot_perceive(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    view, _, _ = play_policy(env, DirectPolicy(reader=CapitalReader()), 2)
    assert view.steps[0].action == Answer(UNABLE_TO_ANSWER)


@pytest.mark.parametrize("dialect", DIALECTS)
def test_rag_searches_image_then_text_then_answers(dialect, tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect=dialect)
    policy = RAGPolicy(tiny_tasks, reader=CapitalReader())
    view, reward, info = play_policy(env, policy, 1)
    kinds = [type(s.action) for s in view.steps]
    assert kinds == [ImageSearch, TextSearch, Answer]
    assert view.steps[1].action == TextSearch("France capital")  # built from the image hits
    assert view.steps[2].action == Answer("Paris")
    assert info["reward_breakdown"].format == 1.0 and reward > 0.5
    # search-free: still searches (search ratio 100%), then answers from perception
    view, reward, info = play_policy(env, policy, 2)
    assert [type(s.action) for s in view.steps] == [ImageSearch, TextSearch, Answer]
    assert view.steps[-1].action == Answer("1") and reward > 0.5


def test_rag_answers_unable_when_the_reader_finds_nothing(tiny_tasks, memory_backend) -> None:
    class Blind(CapitalReader):
        def answer(self, question, hits):
            return None

    env = MMSearchEnv(tiny_tasks, memory_backend)
    view, reward, _ = play_policy(env, RAGPolicy(tiny_tasks, reader=Blind()), 1)
    assert view.steps[-1].action == Answer(UNABLE_TO_ANSWER) and reward < 0.5


@pytest.mark.parametrize("dialect", DIALECTS)
def test_oracle_follows_the_plan(dialect, tiny_tasks, memory_backend) -> None:
    tasks = planned(tiny_tasks)
    env = MMSearchEnv(tasks, memory_backend, dialect=dialect, grounder=AnnotationGrounder())
    policy = OraclePolicy(tasks, reader=CapitalReader())
    view, reward, info = play_policy(env, policy, 0)  # crop to the annotated flag, then answer
    assert [type(s.action) for s in view.steps] == [ImageSearch, Answer]
    assert view.steps[0].box == (200, 20, 300, 90)
    if dialect == "deepmmsearch-r1":
        assert "<img_search>the flag at the top right</img_search>" in view.steps[0].text
    else:
        assert "200" in view.steps[0].text
    assert view.steps[1].action == Answer("France") and info["reward_breakdown"].format == 1.0
    assert reward > 0.5

    view, reward, info = play_policy(env, policy, 1)
    assert [s.action for s in view.steps[:2]] == [ImageSearch(), TextSearch("France capital")]
    assert view.steps[2].action == Answer("Paris") and reward > 0.5

    view, reward, _ = play_policy(env, policy, 2)  # search-free: answer at once from the scene
    assert [s.action for s in view.steps] == [Answer("1")] and reward == pytest.approx(1.0)


def test_oracle_falls_back_to_a_pixel_box_without_a_grounder(tiny_tasks, memory_backend) -> None:
    tasks = planned(tiny_tasks)
    env = MMSearchEnv(tasks, memory_backend, dialect="deepmmsearch-r1")  # no grounder
    view, _, _ = play_policy(env, OraclePolicy(tasks, reader=CapitalReader()), 0)
    assert isinstance(view.steps[0].action, Invalid)
    assert view.steps[1].box == (200, 20, 300, 90) and "<crop>" in view.steps[1].text
    assert isinstance(view.steps[-1].action, Answer)


def test_oracle_never_answers_with_the_gold(tiny_tasks, memory_backend) -> None:
    class Blind(CapitalReader):
        def answer(self, question, hits):
            return None

    tasks = planned(tiny_tasks)
    env = MMSearchEnv(tasks, memory_backend)
    for i in (0, 1):
        view, reward, _ = play_policy(env, OraclePolicy(tasks, reader=Blind()), i)
        assert view.steps[-1].action == Answer(UNABLE_TO_ANSWER) and reward < 0.5


def test_oracle_without_a_plan_plays_like_rag(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend)
    oracle = play_policy(env, OraclePolicy(tiny_tasks, reader=CapitalReader()), 1)[0]
    rag = play_policy(env, RAGPolicy(tiny_tasks, reader=CapitalReader()), 1)[0]
    assert [s.text for s in oracle.steps] == [s.text for s in rag.steps]


def test_oracle_rejects_an_unknown_plan_tool(tiny_tasks, memory_backend) -> None:
    task = tiny_tasks[1]
    tasks = TaskSet([Task(task.id, task.question, task.answers, image_bytes=task.image_bytes,
                          meta={"oracle_plan": [{"tool": "teleport"}]})])
    env = MMSearchEnv(tasks, memory_backend)
    obs, info = env.reset(options={"task_index": 0})
    with pytest.raises(ConfigError, match="teleport"):
        OraclePolicy(tasks, reader=CapitalReader()).act([EpisodeView.start(obs, info, dialect=env.dialect)])


@pytest.mark.parametrize("dialect", DIALECTS)
def test_random_is_deterministic_and_batch_independent(dialect, tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect=dialect, grounder=AnnotationGrounder())
    views = []
    for i in range(3):
        obs, info = env.reset(options={"task_index": i})
        views.append(EpisodeView.start(obs, info, dialect=env.dialect))
    policy = RandomPolicy(seed=3, reader=CapitalReader())
    batch = policy.act(views)
    assert batch == [policy.act([v])[0] for v in views] == RandomPolicy(seed=3).act(views)
    assert len({tuple(RandomPolicy(seed=s).act(views)) for s in range(8)}) > 1


def test_random_covers_every_kind_of_turn(tiny_tasks, memory_backend) -> None:
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect="deepmmsearch-r1", grounder=AnnotationGrounder())
    kinds: set[str] = set()
    regions: set[str] = set()
    for seed in range(40):
        view, _, _ = play_policy(env, RandomPolicy(seed=seed), seed % 3)
        for step in view.steps:
            kinds.add(step.action.kind)
            parsed = env.dialect.parse(step.text)
            if isinstance(parsed, ImageSearch):
                regions.add(parsed.region.kind)
    assert kinds == {"answer", "text_search", "image_search", "invalid"}
    assert regions == {"whole", "box", "expression"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), dialect=st.sampled_from(DIALECTS), index=st.integers(0, 2))
def test_random_episodes_always_end_cleanly(seed, dialect, index, tiny_tasks, memory_backend) -> None:
    # the fixtures are read-only here (the env resets per example), so sharing them is safe
    env = MMSearchEnv(tiny_tasks, memory_backend, dialect=dialect)
    view, reward, info = play_policy(env, RandomPolicy(seed=seed), index, seed=seed)
    assert 1 <= len(view.steps) <= env.max_turns and 0.0 <= reward <= 1.0
    assert "reward_breakdown" in info


# ---------------------------------------------------------------------------------------------
# make_policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,cls", [("direct", DirectPolicy), ("rag", RAGPolicy),
                                      ("oracle", OraclePolicy), (" random ", RandomPolicy)])
def test_make_policy_builds_the_scripted_baselines(spec, cls, tiny_tasks) -> None:
    policy = make_policy(spec, tasks=tiny_tasks, seed=5, reader=CapitalReader())
    assert type(policy) is cls and policy.tasks is tiny_tasks and policy.seed == 5


@pytest.mark.parametrize("spec", ["", "gpt", "transformers:", "openai:", "openai:#model", "sb3:", "rag:x"])
def test_make_policy_rejects_bad_specs_with_the_options(spec) -> None:
    with pytest.raises(ConfigError) as err:
        make_policy(spec)
    assert spec == "" or any(opt.split(":")[0] in str(err.value) for opt in POLICY_SPECS)


def test_make_policy_rejects_bad_arguments(tiny_tasks) -> None:
    with pytest.raises(ConfigError, match="dialect"):
        make_policy("rag", dialect="klingon")
    with pytest.raises(ConfigError, match="unexpected"):
        make_policy("rag", temperature=0.3)
    with pytest.raises(ConfigError, match="TaskSet"):
        make_policy("oracle", tasks=list(tiny_tasks))


def test_make_policy_builds_an_openai_policy() -> None:
    policy = make_policy("openai:http://127.0.0.1:9/v1#tiny-model", seed=2)
    assert policy.name == "openai:tiny-model"
    assert policy.base_url == "http://127.0.0.1:9/v1" and policy.model == "tiny-model"


# ---------------------------------------------------------------------------------------------
# The built-in world: the baselines against the real search engine and reader
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_tasks() -> TaskSet:
    from mmsearch_gym.world import load_tasks

    tasks = load_tasks("test", n=40)
    assert {t.category for t in tasks} == {"search_free", "image_search", "image_then_text", "crop", "text_only"}
    return tasks


def world_run(tasks: TaskSet, spec: str, dialect: str) -> dict[str, list]:
    """Per category: (correct, searched, format) of each episode."""
    from mmsearch_gym.registration import make_env

    env = make_env(tasks=tasks, dialect=dialect)
    policy = make_policy(spec, tasks=tasks)
    out: dict[str, list] = {}
    for i in range(len(tasks)):
        _, _, info = play_policy(env, policy, i)
        b = info["reward_breakdown"]
        out.setdefault(info["category"], []).append((b.raw_score > 0.5, b.searches > 0, b.format))
    return out


@pytest.mark.parametrize("dialect", DIALECTS)
def test_world_oracle_answers_everything_with_minimal_searches(dialect, world_tasks) -> None:
    results = world_run(world_tasks, "oracle", dialect)
    for category, rows in results.items():
        assert all(correct and fmt == 1.0 for correct, _, fmt in rows), category
        assert all(searched == (category != "search_free") for _, searched, _ in rows), category


def test_world_rag_always_searches_and_misses_only_crops(world_tasks) -> None:
    results = world_run(world_tasks, "rag", "mmsearch-r1")
    assert all(searched and fmt == 1.0 for rows in results.values() for _, searched, fmt in rows)
    for category in ("search_free", "image_search", "image_then_text", "text_only"):
        assert all(correct for correct, _, _ in results[category]), category
    # a whole-image search names the most salient flag, not the one the question points at
    assert sum(correct for correct, _, _ in results["crop"]) < len(results["crop"])


def test_world_direct_knows_only_what_it_sees(world_tasks) -> None:
    results = world_run(world_tasks, "direct", "mmsearch-r1")
    for category, rows in results.items():
        assert all(not searched and fmt == 1.0 for _, searched, fmt in rows)
        assert all(correct == (category == "search_free") for correct, _, _ in rows), category


def test_text_only_content_puts_placeholders_where_the_images_were() -> None:
    image = {"type": "image", "image": None}
    result = [{"type": "text", "text": "<information>\n1. "}, image, {"type": "text", "text": " Flag of Peru\n2. "},
              image, {"type": "text", "text": " Flag of Chad\n</information>"}]
    assert text_only_content(result) == (
        "<information>\n1. [image] Flag of Peru\n2. [image] Flag of Chad\n</information>")
    # the task image before the question: joined by a newline rather than run together
    question = {"type": "text", "text": "Question: which?"}
    assert text_only_content([image, question], "<pic>") == "<pic>\nQuestion: which?"
    assert text_only_content("plain") == "plain"
    # markers without their images (or images without markers) stay as plain words
    assert text_only_content([{"type": "text", "text": "1. <image> x"}]) == "1. [image] x"


# ---------------------------------------------------------------------------------------------
# The registry: families resolved on use, missing extras named
# ---------------------------------------------------------------------------------------------


def test_registry_targets_are_strings_resolved_on_use() -> None:
    from mmsearch_gym.policies import POLICY_REGISTRY

    assert set(POLICY_REGISTRY) >= {"transformers", "openai", "sb3"}
    for prefix, entry in POLICY_REGISTRY.items():
        assert isinstance(entry.target, str) and ":" in entry.target
        assert prefix in entry.example
    assert callable(POLICY_REGISTRY["openai"].resolve("openai"))


@pytest.mark.parametrize("spec,extra,module", [("transformers:/no/such/model", "trl", "torch"),
                                               ("sb3:/no/such/model.zip", "sb3", "torch")])
def test_a_missing_extra_is_named(spec: str, extra: str, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if torch were not installed
    for name in [n for n in sys.modules if n.startswith("mmsearch_gym.integrations")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=rf"needs {module}.*pip install 'mmsearch-gym\[{extra}\]'"):
        make_policy(spec)


def test_register_policy_adds_a_family(tiny_tasks) -> None:
    from mmsearch_gym.policies import POLICY_REGISTRY, PolicyEntry, register_policy

    register_policy("scripted-rag", PolicyEntry("mmsearch_gym.policies:RAGPolicy", "scripted-rag:x"))
    try:
        with pytest.raises(ConfigError, match="needs an argument"):
            make_policy("scripted-rag:")
        with pytest.raises(ConfigError, match="policy scripted-rag: .*tasks"):  # a second value for tasks
            make_policy("scripted-rag:x", tasks=tiny_tasks)
    finally:
        del POLICY_REGISTRY["scripted-rag"]
    register_policy("gone", PolicyEntry("mmsearch_gym_no_such_module.sub:Thing", "gone:x", extra="trl"))
    try:
        with pytest.raises(ConfigError, match=r"needs mmsearch_gym_no_such_module.*\[trl\]"):
            make_policy("gone:x")
    finally:
        del POLICY_REGISTRY["gone"]
    with pytest.raises(ConfigError, match="prefix"):
        register_policy("rag", PolicyEntry("m:x", "rag:x"))
