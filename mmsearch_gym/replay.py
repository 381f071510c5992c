"""Replay: re-execute recorded episodes and prove they reproduce bit for bit.

``mmsearch-gym replay run.jsonl`` rebuilds the env of each trajectory (the caller's, or the
registered id the file names), answers every search in strict cache replay, re-sends the
recorded action texts and compares every observation, hit list and reward with the recording
(:class:`ReplayReport`, with a unified diff of the first mismatching turn of an episode).
"""

from __future__ import annotations

import difflib
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.env_factory import EnvFactory, describe_env, unwrap_env
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.trajectories import Trajectory, read_trajectories, turn_from_step

if TYPE_CHECKING:
    import gymnasium as gym

__all__ = ["Mismatch", "ReplayReport", "replay"]

_REPLAY_CHECKED = ("dialect", "reward", "limits", "backend", "tasks")
"""The env-block fields a replay env must match before any turn is re-executed."""





@dataclass(frozen=True)
class Mismatch:
    """The first turn of an episode whose replay differs from the recording."""

    episode: int
    task_id: str
    policy: str
    turn: int | None
    """1-based turn number, 0 for the reset, None for the final reward breakdown."""
    diff: str
    """A unified diff, recorded (---) against replayed (+++), or an error message."""

    def describe(self) -> str:
        where = ("reset" if self.turn == 0 else "final reward" if self.turn is None else f"turn {self.turn}")
        return f"episode {self.episode} (task {self.task_id}, policy {self.policy}), {where}"


@dataclass
class ReplayReport:
    """What a replay checked and where it first diverged."""

    episodes: int = 0
    turns: int = 0
    mismatches: list[Mismatch] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        if self.ok:
            return (f"replay OK: {self.episodes} episodes, {self.turns} turns; every observation, "
                    "hit list and reward is identical")
        return (f"replay FAILED: {len(self.mismatches)} of {self.episodes} episodes differ; first: "
                f"{self.mismatches[0].describe()}")


def _pretty(value: Any, indent: str = "") -> list[str]:
    """A YAML-like, line-per-fact view for diffs: multi-line strings (observations) stay readable."""
    lines: list[str] = []
    items = (sorted(value.items()) if isinstance(value, dict)
             else [("-", v) for v in value] if isinstance(value, list) else None)
    if items is None:
        return [indent + _scalar(value)]
    if not items:
        return [indent + ("{}" if isinstance(value, dict) else "[]")]
    for key, item in items:
        head = f"{indent}{key}:" if key != "-" or isinstance(value, dict) else f"{indent}-"
        if isinstance(item, str) and "\n" in item:
            lines.append(head + " |")
            lines += [f"{indent}  {part}" for part in item.split("\n")]
        elif isinstance(item, (dict, list)) and item:
            lines.append(head)
            lines += _pretty(item, indent + "  ")
        else:
            lines.append(f"{head} {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _diff(recorded: Any, replayed: Any, label: str) -> str:
    lines = difflib.unified_diff(_pretty(recorded), _pretty(replayed), fromfile=f"recorded {label}",
                                 tofile=f"replayed {label}", n=3, lineterm="")
    return "\n".join(lines) + "\n"


def replay(trajectories: str | Path | Iterable[Trajectory], *,
           env: str | EnvFactory | Mapping[str, Any] | Callable[[], gym.Env] | None = None,
           cassette: str | Path | None = None, cache_dir: str | Path | None = None,
           overrides: Mapping[str, Any] | None = None,
           stop_at_first: bool = False, progress: bool = False) -> ReplayReport:
    """Re-execute recorded action texts and check that the env answers exactly as recorded.

    What the episodes replay against comes from the arguments only; a trajectory file names
    at most a registered env id and its JSON overrides, never a path, a cache location or a
    cache mode:

    * the env: ``env`` (an id, an :class:`~mmsearch_gym.env_factory.EnvFactory`, its JSON
      description, or a factory), else the registered id recorded in each trajectory, with the
      recorded JSON overrides (but not its ``cache`` block, nor a task file path), then the
      caller's ``overrides`` (e.g. ``tasks`` for a run recorded on a task file, or components);
    * the searches, always in *strict* replay (``SearchCache(mode="replay")``, no fallback): over
      a fresh directory loaded from ``cassette``, over ``cache_dir``, or over the cache the env's
      own registered spec names. A factory callable brings its own cache, which must be a replay
      cache. A search that is not cached is reported as the first mismatch (CacheMiss).

    Compared at reset: the task's question, category, gold answers and image digest. Compared
    per turn: the parsed action, the observation text, the crop box, every hit
    (url, title, snippet, score, source, thumbnail digest), search errors, the step reward and
    the termination flags; at the end, the full reward breakdown. Timings are not compared.
    """
    items = read_trajectories(trajectories) if isinstance(trajectories, (str, Path)) else list(trajectories)
    if cassette is not None and cache_dir is not None:
        raise ConfigError("pass a cassette or a cache directory to replay against, not both")
    report = ReplayReport()
    built: dict[str, Any] = {}
    temp_dirs: list[tempfile.TemporaryDirectory[str]] = []
    bar = _progress(len(items), "replay", progress)
    try:
        for traj in items:
            report.episodes += 1
            factory = _replay_factory(traj, env, cassette, cache_dir, temp_dirs, overrides or {})
            key = repr(factory) if factory.factory is not None else json.dumps(factory.to_json(), sort_keys=True)
            if key not in built:
                built[key] = _replay_env(traj, factory)
            mismatch = _replay_episode(built[key], traj, report)
            if mismatch is not None:
                report.mismatches.append(mismatch)
                if stop_at_first:
                    break
            bar.update(1)
    finally:
        bar.close()
        for game in built.values():
            game.close()
        for tmp in temp_dirs:
            tmp.cleanup()
    return report


def _replay_factory(traj: Trajectory, env: Any, cassette: str | Path | None, cache_dir: str | Path | None,
                    temp_dirs: list[tempfile.TemporaryDirectory[str]], extra: Mapping[str, Any]) -> EnvFactory:
    """The env to replay ``traj`` on: the caller's env (or the recorded registered id) in strict replay."""
    if env is not None and not isinstance(env, (str, EnvFactory, Mapping)) and callable(env):
        if cassette is not None or cache_dir is not None or extra:
            raise ConfigError("a cassette, cache directory or overrides go with an env id; "
                              "an env factory brings its own cache and arguments")
        return EnvFactory.create(env)
    record = traj.env
    if env is None:
        if record.get("id") is None:
            raise ConfigError(f"episode {traj.episode} was recorded with a custom env factory (no env id); "
                              "pass the env to replay (--env ID, or env= a factory in Python)")
        if record.get("opaque_kwargs"):
            raise ConfigError(f"episode {traj.episode} was recorded with object arguments "
                              f"{record['opaque_kwargs']} that a file cannot hold; pass env= a factory that builds it")
        env = str(record["id"])
    given = EnvFactory.create(env)
    if given.factory is not None:
        return _replay_factory(traj, given.factory, cassette, cache_dir, temp_dirs, extra)
    overrides = {k: v for k, v in dict(record.get("kwargs") or {}).items() if k != "cache"}
    overrides.update(given.kwargs)
    if "cache" in extra:
        raise ConfigError("replay chooses its cache from --cassette / --cache-dir (always strict), not from overrides")
    caller_tasks = "tasks" in given.kwargs or "tasks" in extra
    overrides.update(extra)
    tasks = overrides.get("tasks")
    if not caller_tasks and isinstance(tasks, str) and not tasks.startswith("world:"):
        raise ConfigError(f"episode {traj.episode} was recorded on tasks {tasks!r}; replay takes no path from a "
                          "trajectory file: name them (--tasks SOURCE, or overrides={'tasks': ...})")
    overrides["cache"] = _replay_cache(given, cassette, cache_dir, temp_dirs)
    return EnvFactory(given.env_id, overrides, given.spec)


def _replay_cache(given: EnvFactory, cassette: str | Path | None, cache_dir: str | Path | None,
                  temp_dirs: list[tempfile.TemporaryDirectory[str]]) -> dict[str, Any]:
    """The strict replay cache block: from the caller's cassette or directory, else the env's spec."""
    if cassette is not None:
        tmp = tempfile.TemporaryDirectory(prefix="mmsearch-replay-")
        temp_dirs.append(tmp)
        return {"mode": "replay", "dir": tmp.name, "cassette": str(Path(cassette).resolve())}
    if cache_dir is not None:
        directory = Path(cache_dir).expanduser()
        if not (directory / "cache.db").is_file():
            raise ConfigError(f"no search cache at {directory}; pass the cache directory of the recorded run "
                              "(--cache-dir DIR) or a cassette exported from it (--cassette FILE)")
        return {"mode": "replay", "dir": str(directory)}
    import gymnasium as gym

    spec_kwargs = given.spec.get("kwargs") or {} if given.spec is not None else gym.spec(given.env_id).kwargs  # type: ignore[arg-type]
    block = given.kwargs.get("cache") or spec_kwargs.get("cache")
    if not isinstance(block, Mapping):
        raise ConfigError(f"the env {given.label} names no search cache to replay from; pass --cassette FILE "
                          "or --cache-dir DIR")
    return {**{k: v for k, v in block.items() if k != "fallback"}, "mode": "replay"}


def _replay_env(traj: Trajectory, factory: EnvFactory) -> gym.Env:
    from mmsearch_gym.search.cache import SearchCache

    game = factory.build()
    base = game.unwrapped
    backend = getattr(base, "backend", None)
    if not isinstance(backend, SearchCache) or backend.mode != "replay":
        game.close()
        raise ConfigError(f"the replay env {factory.label} does not search through a replay SearchCache; "
                          "replay is strict: give it a cache in mode 'replay' (or pass --cassette / --cache-dir)")
    live = describe_env(base)  # type: ignore[arg-type]
    record = traj.env
    diffs = [name for name in _REPLAY_CHECKED if live[name] != record.get(name)]
    if diffs:
        details = "".join(_diff({n: record.get(n) for n in diffs}, {n: live[n] for n in diffs}, "env"))
        game.close()
        raise ConfigError(f"the replay env differs from the recorded one in {diffs}; it would not reproduce "
                          f"the run:\n{details}")
    return game


def _replay_episode(game: gym.Env, traj: Trajectory, report: ReplayReport) -> Mismatch | None:
    from mmsearch_gym.search.cache import CacheMiss
    from mmsearch_gym.tasks import image_digest

    def mismatch(turn: int | None, recorded: Any, replayed: Any) -> Mismatch:
        label = "reset" if turn == 0 else "reward breakdown" if turn is None else f"turn {turn}"
        return Mismatch(traj.episode, traj.task_id, traj.policy, turn,
                        _diff(recorded, replayed, f"episode {traj.episode} {label}"))

    base = unwrap_env(game)
    if traj.task_id not in base.tasks:
        return Mismatch(traj.episode, traj.task_id, traj.policy, 0,
                        f"task {traj.task_id!r} is not in the replay env's task set {base.tasks.name!r}\n")
    _, info = game.reset(seed=traj.seed, options={"task_id": traj.task_id})
    image = base.task.load_image()
    start_rec = {"task_id": traj.task_id, "category": traj.category, "question": traj.question,
                 "answers": list(traj.answers), "image_digest": traj.image.digest}
    start_new = {"task_id": info["task_id"], "category": info["category"], "question": info["question"],
                 "answers": list(base.task.answers), "image_digest": image_digest(image)}
    if start_rec != start_new:
        return mismatch(0, start_rec, start_new)
    for number, turn in enumerate(traj.turns, 1):
        try:
            obs, reward, terminated, truncated, info = game.step(turn.text)
        except CacheMiss as err:
            return Mismatch(traj.episode, traj.task_id, traj.policy, number,
                            f"search not in the replay cache (CacheMiss): {err}\n")
        report.turns += 1
        replayed = turn_from_step(turn.text, obs, float(reward), terminated, truncated, info)
        if replayed.comparable() != turn.comparable():
            return mismatch(number, turn.comparable(), replayed.comparable())
        if (terminated or truncated) and number < len(traj.turns):
            nxt = traj.turns[number]
            return mismatch(number + 1, {"text": nxt.text, "action": nxt.action},
                            "the replayed episode ended before this turn")
        if number == len(traj.turns):
            if not (terminated or truncated):
                return mismatch(None, "the recorded episode ended here", "the replayed episode goes on")
            breakdown = info["reward_breakdown"].to_json()
            if breakdown != traj.reward.to_json():
                return mismatch(None, traj.reward.to_json(), breakdown)
    return None


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="ep", disable=not enabled, leave=False, dynamic_ncols=True)
