"""EnvFactory: one JSON-describable recipe that builds the same env in any process.

A factory is a registered env id plus overrides (``{"id": "MMSearch-v0", "kwargs": {...}}``),
a spec (``{"spec": {"kwargs": {...}}, "kwargs": {...}}``, the shape of a file in ``envs/``,
built by :func:`mmsearch_gym.registration.make_env`), or, in Python only, a picklable callable.
Worker processes, trainers and replays rebuild envs from it; :class:`SiblingEnvs` builds many
envs that share one task set, search backend and grounder (rebuilding the world's indexes per
env would cost seconds and memory for nothing). :func:`describe_env` is the ``env`` block a
trajectory records.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.search.redaction import redact_url_text

if TYPE_CHECKING:
    import gymnasium as gym

    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.tasks import TaskSet

__all__ = ["EnvFactory", "SiblingEnvs", "describe_env", "unwrap_env"]

EnvCallable = Callable[..., "gym.Env"]


@dataclass(frozen=True)
class EnvFactory:
    """How to build one env anywhere: ``env_id`` + ``kwargs``, a ``spec`` + ``kwargs``, or ``factory``.

    Picklable whenever its kwargs and factory are (an id or a spec with JSON kwargs always is);
    :meth:`to_json` / :meth:`from_json` round-trip the id and spec forms.
    """

    env_id: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Overrides given to ``gym.make`` (or merged over the spec's kwargs)."""
    spec: Mapping[str, Any] | None = None
    """An env spec ``{"id"?: ..., "kwargs": {...}}`` built by ``make_env`` without registration."""
    factory: EnvCallable | None = None

    @classmethod
    def create(cls, env: str | Mapping[str, Any] | EnvCallable | EnvFactory,
               kwargs: Mapping[str, Any] | None = None) -> EnvFactory:
        """A factory from an env id, a JSON description (see :meth:`from_json`), a callable or a
        factory; ``kwargs`` are more overrides (ids and specs only)."""
        kwargs = dict(kwargs or {})
        if isinstance(env, EnvFactory):
            if kwargs and env.factory is not None:
                raise ConfigError("env overrides go with an env id or spec; bake them into the factory instead")
            return cls(env.env_id, {**env.kwargs, **kwargs}, env.spec, env.factory)
        if isinstance(env, str):
            _check_id(env)
            return cls(env, kwargs)
        if isinstance(env, Mapping):
            made = cls.from_json(env)
            return cls(made.env_id, {**made.kwargs, **kwargs}, made.spec)
        if callable(env):
            if kwargs:
                raise ConfigError("env overrides go with an env id; bake them into the factory instead")
            return cls(None, {}, None, env)
        raise ConfigError(f"env must be an env id, a spec, or a factory returning an env, got {type(env).__name__}")

    @classmethod
    def like(cls, env: gym.Env, tasks: TaskSet | None = None) -> EnvFactory:
        """A factory of new envs with ``env``'s settings that share its task set (or ``tasks``),
        search backend and grounder; ``env`` itself is never handed out or stepped."""
        from mmsearch_gym.registration import make_env

        base = unwrap_env(env)
        return cls(factory=functools.partial(
            make_env, tasks=tasks if tasks is not None else base.tasks, backend=base.backend,
            grounder=base.grounder, reward=base.reward_spec, dialect=base.dialect.name, max_turns=base.max_turns,
            image_search_budget=base.image_search_budget, text_search_budget=base.text_search_budget,
            top_k=base.top_k, on_invalid=base.on_invalid, image_size=base.image_size,
            min_crop_side=base.min_crop_side, max_text_length=base.max_text_length, render_mode=base.render_mode,
            system_prompt=base.system_prompt, info_messages=base.info_messages))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnvFactory:
        """``{"id": ID, "kwargs": {...}}`` or ``{"spec": {"kwargs": {...}}, "kwargs": {...}}``."""
        unknown = sorted(set(data) - {"id", "kwargs", "spec"})
        kwargs = data.get("kwargs") or {}
        if unknown or not isinstance(kwargs, Mapping):
            raise ConfigError(f"an env description has the keys id, kwargs (an object) and spec; got {sorted(data)}")
        spec = data.get("spec")
        if spec is not None:
            if not isinstance(spec, Mapping) or not isinstance(spec.get("kwargs", {}), Mapping):
                raise ConfigError("an env spec must be an object with a 'kwargs' object")
            return cls(None, dict(kwargs), dict(spec))
        env_id = data.get("id")
        if not isinstance(env_id, str):
            raise ConfigError(f"an env description needs an 'id' string or a 'spec' object, got {sorted(data)}")
        _check_id(env_id)
        return cls(env_id, dict(kwargs))

    def to_json(self) -> dict[str, Any]:
        """The JSON description; ConfigError for a callable factory or object overrides."""
        if self.factory is not None:
            raise ConfigError(f"{self.label} is a Python callable; only an env id or a spec has a JSON form")
        opaque = sorted(k for k, v in self.kwargs.items() if not _json_safe(v))
        if opaque:
            raise ConfigError(f"env overrides {opaque} are objects, not JSON")
        data: dict[str, Any] = {"kwargs": dict(self.kwargs)}
        if self.spec is not None:
            data["spec"] = dict(self.spec)
        else:
            data["id"] = self.env_id
        return data

    @property
    def label(self) -> str:
        """A short name for tables and progress bars."""
        if self.env_id is not None:
            return self.env_id
        if self.spec is not None:
            return str(self.spec.get("id") or "<spec>")
        name = getattr(self.factory, "__name__", None) or getattr(getattr(self.factory, "func", None),
                                                                   "__name__", "factory")
        return f"<{name}>"

    def build(self, **shared: Any) -> gym.Env:
        """A new env; ``shared`` are objects (tasks, backend, grounder) reused from a sibling env."""
        if self.factory is not None:
            return self.factory(**shared) if shared else self.factory()
        if self.spec is not None:
            from mmsearch_gym.registration import make_env

            try:
                return make_env(**{**dict(self.spec.get("kwargs") or {}), **self.kwargs, **shared})
            except TypeError as err:
                raise ConfigError(f"cannot build the env spec with {sorted(self.kwargs)}: {err}") from None
        import gymnasium as gym

        import mmsearch_gym  # noqa: F401  (registers the shipped ids)

        try:
            return gym.make(self.env_id, disable_env_checker=True, **{**self.kwargs, **shared})  # type: ignore[arg-type]
        except TypeError as err:
            raise ConfigError(f"cannot build {self.env_id} with {sorted(self.kwargs)}: {err}") from None

    def shares_objects(self) -> bool:
        """Whether sibling envs can reuse one task set, backend and grounder (``make_env`` envs can)."""
        from mmsearch_gym.registration import ENTRY_POINT, make_env

        if self.spec is not None:
            return True
        if self.factory is not None:
            return isinstance(self.factory, functools.partial) and self.factory.func is make_env
        import gymnasium as gym

        entry = gym.spec(self.env_id).entry_point  # type: ignore[arg-type]
        return entry == ENTRY_POINT or entry is make_env or (
            isinstance(entry, functools.partial) and entry.func is make_env)

    def siblings(self, first: gym.Env | None = None) -> SiblingEnvs:
        """A group of envs of this factory sharing one task set, backend and grounder."""
        return SiblingEnvs(self, first)

    def describe(self, env: gym.Env) -> dict[str, Any]:
        """The ``env`` block a trajectory records for an env this factory built."""
        kwargs = dict(self.kwargs)
        if self.spec is not None:
            kwargs = {**dict(self.spec.get("kwargs") or {}), **kwargs}
        return describe_env(unwrap_env(env), env_id=self.env_id, kwargs=kwargs)


class SiblingEnvs:
    """Envs of one factory, one per key (a schedule slot), built on first use and closed together.

    Siblings share the first env's task set, search backend and grounder when the factory
    allows it (:meth:`EnvFactory.shares_objects`).
    """

    def __init__(self, factory: EnvFactory, first: gym.Env | None = None) -> None:
        self.factory = factory
        self.envs: dict[int, gym.Env] = {}
        self._first = first
        self._shared: dict[str, Any] | None = None

    def get(self, key: int) -> gym.Env:
        """The env of ``key`` (built now if it is new)."""
        env = self.envs.get(key)
        if env is None:
            env = self.envs[key] = self.new()
        return env

    def new(self) -> gym.Env:
        """One more sibling env, not kept under a key (the caller closes it)."""
        if self._first is not None:
            env, self._first = self._first, None
        elif self._shared is not None:
            env = self.factory.build(**self._shared)
        else:
            env = self.factory.build()
        if self._shared is None and self.factory.shares_objects():
            base = unwrap_env(env)
            self._shared = {"tasks": base.tasks, "backend": base.backend, "grounder": base.grounder, "cache": None}
        return env

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()
        if self._first is not None:
            self._first.close()
            self._first = None


def unwrap_env(env: gym.Env) -> MMSearchEnv:
    """The MMSearchEnv under any wrappers; ConfigError for another env."""
    from mmsearch_gym.env import MMSearchEnv

    base = getattr(env, "unwrapped", env)
    if not isinstance(base, MMSearchEnv):
        raise ConfigError(f"this needs an MMSearchEnv (possibly wrapped), got {type(base).__name__}")
    return base


def describe_env(env: MMSearchEnv, *, env_id: str | None = None,
                 kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``env`` block of a trajectory: id, JSON-safe overrides and everything that changes results."""
    from mmsearch_gym.search.cache import SearchCache

    kwargs = dict(kwargs or {})
    safe = {k: _scrubbed(v) for k, v in sorted(kwargs.items()) if _json_safe(v)}
    backend = env.backend
    cache = None
    if isinstance(backend, SearchCache):
        where = backend.location if backend.directory is None else str(Path(backend.directory).resolve())
        cache = {"mode": backend.mode, "dir": where, "name": backend.name,
                 "version": backend.version, "params": dict(backend.params)}
    return {
        "id": env_id,
        "kwargs": safe,
        "opaque_kwargs": sorted(k for k in kwargs if k not in safe),
        "dialect": env.dialect.name,
        "reward": env.reward_spec.describe(),
        "limits": {"max_turns": env.max_turns, "image_search_budget": env.image_search_budget,
                   "text_search_budget": env.text_search_budget, "top_k": env.top_k,
                   "on_invalid": env.on_invalid, "min_crop_side": env.min_crop_side,
                   "image_size": list(env.image_size), "max_text_length": env.max_text_length},
        "backend": {"name": str(getattr(backend, "name", "")), "version": str(getattr(backend, "version", ""))},
        "cache": cache,
        "tasks": {"name": env.tasks.name, "size": len(env.tasks)},
    }


def _scrubbed(value: Any) -> Any:
    """``value`` with URL passwords and credential-looking query parameters masked in every
    string (``redis://user:pw@host`` in a cache block): a trajectory never holds a secret."""
    if isinstance(value, str):
        return redact_url_text(value)
    if isinstance(value, Mapping):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrubbed(v) for v in value]
    return value


def _json_safe(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_id(env_id: str) -> None:
    import gymnasium as gym

    import mmsearch_gym  # noqa: F401  (registers the shipped ids)

    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"unknown env id {env_id!r} ({err}); registered mmsearch ids: "
                          f"{sorted(i for i in gym.registry if i.startswith('MMSearch'))}") from None
