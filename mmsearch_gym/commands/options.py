"""Checks of command-line values shared by ``eval`` and ``demo``, done before anything is written.

* :func:`check_env_overrides`: ``--set KEY=VALUE`` against the env spec, i.e. the keyword
  arguments of :func:`mmsearch_gym.registration.make_env` and :class:`~mmsearch_gym.env.MMSearchEnv`
  and the JSON types their annotations allow (derived from the signatures, so a new env option
  is checked without editing this file);
* :func:`check_policy_spec`: a policy spec names a known policy, and the optional extra a
  model policy needs is installed (else: which extra to install).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from collections.abc import Mapping
from typing import Any

from mmsearch_gym.errors import ConfigError

__all__ = ["POLICY_EXTRAS", "check_env_overrides", "check_policy_spec", "env_option_types", "missing_extra"]

POLICY_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "transformers": ("trl", ("torch", "transformers")),
    "sb3": ("sb3", ("torch", "stable_baselines3")),
}
"""Policy kind -> (the pip extra that installs it, the modules it imports)."""

_NOT_SETTABLE = {"self", "env_kwargs", "render_mode"}

_JSON_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
               "pair": "a pair of integers [a, b]", "object": "a JSON object", "any": "any JSON", "None": "null"}
"""Names of the JSON kinds, in the order messages list them."""


def _json_kinds(annotation: str) -> set[str]:
    """The JSON kinds a (string) annotation admits: int, float, str, bool, None, object, pair, any.

    Parts that are Python classes (``TaskSet``, ``RewardSpec``, ...) admit nothing: they cannot
    come from the command line. ``Literal[...]`` admits its strings (checked by the env).
    """
    kinds: set[str] = set()
    for part in (p.strip() for p in re.split(r"\|(?![^\[]*\])", annotation)):
        if part in ("int", "float", "str", "bool", "None"):
            kinds.add(part)
        elif part in ("Any", "object"):
            kinds.add("any")
        elif part.startswith(("Mapping[", "dict[", "Mapping", "dict")):
            kinds.add("object")
        elif part.startswith("tuple[int, int]"):
            kinds.add("pair")
        elif part.startswith("Literal["):
            kinds.add("str")
    return kinds


def env_option_types() -> dict[str, set[str]]:
    """Every env keyword argument that ``--set`` can give, with the JSON kinds it admits."""
    from mmsearch_gym.env import MMSearchEnv
    from mmsearch_gym.registration import make_env

    options: dict[str, set[str]] = {}
    for func in (MMSearchEnv.__init__, make_env):  # make_env's spec values win over the env's objects
        for name, param in inspect.signature(func).parameters.items():
            if name in _NOT_SETTABLE or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            annotation = param.annotation if isinstance(param.annotation, str) else \
                getattr(param.annotation, "__name__", "Any")
            options[name] = _json_kinds("Any" if param.annotation is param.empty else annotation)
    return {name: kinds for name, kinds in options.items() if kinds}


def _kind_of(value: Any) -> str:
    if value is None:
        return "None"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, dict):
        return "object"
    return "list"


def _admits(kinds: set[str], value: Any) -> bool:
    kind = _kind_of(value)
    if "any" in kinds or kind in kinds:
        return True
    if kind == "int" and "float" in kinds:
        return True
    return (kind == "list" and "pair" in kinds and len(value) == 2
            and all(_kind_of(v) == "int" for v in value))


def check_env_overrides(overrides: Mapping[str, Any], flag: str = "--set") -> None:
    """ConfigError naming the key, what it got and what it takes, for any override the env cannot take."""
    options = env_option_types()
    for key, value in overrides.items():
        if key not in options:
            raise ConfigError(f"{flag} {key}=...: the env has no option {key!r}; options: {sorted(options)}")
        if not _admits(options[key], value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            wanted = " or ".join(name for kind, name in _JSON_NAMES.items() if kind in options[key])
            hint = f"; quote a string like {key}='\"text\"'" if "str" in options[key] else ""
            raise ConfigError(f"{flag} {key}={shown}: {key} takes {wanted} (values are read as JSON{hint})")


def missing_extra(kind: str) -> str | None:
    """The install hint when the optional extra of policy ``kind`` is not installed, else None."""
    if kind not in POLICY_EXTRAS:
        return None
    extra, modules = POLICY_EXTRAS[kind]
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(module)
    if not missing:
        return None
    torch_first = " (install torch first: pip install torch)" if "torch" in missing else ""
    return (f"the {kind}: policy needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"installed; install the extra: pip install 'mmsearch-gym[{extra}]'{torch_first}")


def check_policy_spec(spec: str) -> None:
    """ConfigError for an unknown policy spec or a model policy whose extra is not installed."""
    from mmsearch_gym.policies import POLICY_SPECS

    kind, sep, rest = spec.strip().partition(":")
    known = {s.partition(":")[0]: ":" in s for s in POLICY_SPECS}
    if kind not in known or known[kind] != bool(sep):
        raise ConfigError(f"unknown policy spec {spec!r}; choose one of {list(POLICY_SPECS)}")
    hint = missing_extra(kind)
    if hint is not None:
        raise ConfigError(hint)
