"""``mmsearch-gym train RECIPE``: run a training recipe from ``policies/``.

A recipe is a JSON file (a path, or the name of one shipped in ``policies/``) whose
``"trainer"`` field picks the integration: ``sft``, ``grpo`` or ``sft+grpo`` go to the TRL
adapter, ``ppo`` or ``dqn`` to the Stable-Baselines3 wrapper. Each integration exposes
``train_recipe(recipe, output_dir=...) -> dict`` (``--set`` overrides are merged into the recipe
first) and is imported only here, so
the CLI stays light for users who have neither installed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmsearch_gym.commands.components import add_component_flags, component_overrides
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.resources import resource_dir

HELP = "train a policy from a recipe in policies/ (TRL SFT/GRPO or SB3 PPO/DQN)"

_INTEGRATIONS = {"sft": "trl", "grpo": "trl", "sft+grpo": "trl", "ppo": "sb3", "dqn": "sb3"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="recipe name (e.g. ppo-world) or path to a recipe JSON file")
    parser.add_argument("-o", "--output-dir", type=Path, default=None,
                        help="where checkpoints, logs and the summary go (default: runs/RECIPE)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe field (dotted keys, JSON values), e.g. --set grpo.max_steps=2")
    parser.add_argument("--list", action="store_true", help="list the shipped recipes and exit")
    add_component_flags(parser)


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """Read a recipe by path or by shipped name (with or without ``.json``)."""
    path = Path(name_or_path)
    if not path.exists():
        shipped = resource_dir("policies")
        path = shipped / (name_or_path if name_or_path.endswith(".json") else f"{name_or_path}.json")
        if not path.exists():
            names = sorted(p.stem for p in shipped.glob("*.json"))
            raise ConfigError(f"no recipe {name_or_path!r}; shipped recipes: {names}")
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"recipe {path} is not valid JSON: {err}") from None
    if not isinstance(recipe, dict) or recipe.get("trainer") not in _INTEGRATIONS:
        raise ConfigError(f"recipe {path} needs a 'trainer' field, one of {sorted(_INTEGRATIONS)}")
    recipe.setdefault("name", path.stem)
    return recipe


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["grpo.max_steps=2", "model=\\"x\\""]`` -> nested dict; values parsed as JSON when possible."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = merge(merged[key], value) if nested else value
    return merged


def run(args: argparse.Namespace) -> int:
    if args.list:
        for path in sorted(resource_dir("policies").glob("*.json")):
            recipe = json.loads(path.read_text(encoding="utf-8"))
            print(f"{path.stem:32s} {recipe.get('trainer', '?'):9s} {recipe.get('description', '')}")
        return 0
    if args.recipe is None:
        raise ConfigError("name a recipe (mmsearch-gym train --list shows the shipped ones)")
    recipe = merge(load_recipe(args.recipe), parse_overrides(args.set))
    components = component_overrides(args)
    if components:  # the recipe's env is built by make_env, which takes these by name
        recipe = merge(recipe, {"env": {"kwargs": components}})
    output_dir = args.output_dir or Path("runs") / recipe["name"]
    integration = _INTEGRATIONS[recipe["trainer"]]
    if integration == "trl":
        try:
            from mmsearch_gym.integrations.trl import train_recipe
        except ImportError as err:
            raise ConfigError(f"the TRL integration needs extras: pip install 'mmsearch-gym[trl]' ({err})") from None
    else:
        try:
            from mmsearch_gym.integrations.sb3 import train_recipe
        except ImportError as err:
            raise ConfigError(f"the SB3 integration needs extras: pip install 'mmsearch-gym[sb3]' ({err})") from None
    summary = train_recipe(recipe, output_dir=Path(output_dir))
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0
