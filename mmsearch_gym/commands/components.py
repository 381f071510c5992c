"""The ``--backend``, ``--judge``, ``--summarizer`` and ``--grounder`` flags shared by eval, demo,
rescore and train: each names a component as in ``mmsearch_gym/search/registry.py`` (a name,
``name:VALUE`` or a JSON mapping) and becomes the env override of the same name.

    --backend serpapi                    --backend '{"name": "serpapi", "api_key_env": "MY_KEY"}'
    --judge openai:http://127.0.0.1:8000/v1#Qwen2.5-7B-Instruct
    --summarizer openai:URL#MODEL        --grounder openai:URL#Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

import argparse
import json
from typing import Any

COMPONENTS = ("backend", "judge", "summarizer", "grounder")
_HELP = {
    "backend": "search backend: world | serpapi[:URL] | searxng:URL | google-vision | a JSON spec "
               "(e.g. {\"name\": \"compose\", \"text\": \"serpapi\", \"image\": \"google-vision\"})",
    "judge": "LLM judge for the reward: openai:BASE_URL#MODEL (or a JSON spec); verdicts are recorded",
    "summarizer": "LLM that summarises search results: openai:BASE_URL#MODEL (or a JSON spec)",
    "grounder": "referring-expression grounder: annotations | none | openai:BASE_URL#VLM | detector:MODEL",
}


def add_component_flags(parser: argparse.ArgumentParser, names: tuple[str, ...] = COMPONENTS) -> None:
    for name in names:
        parser.add_argument(f"--{name}", default=None, metavar="SPEC", dest=f"component_{name}", help=_HELP[name])


def parse_component(raw: str) -> Any:
    """A flag's value: a JSON object when it looks like one, else the string as given."""
    text = raw.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            from mmsearch_gym.errors import ConfigError
            raise ConfigError(f"component spec {raw!r} is not valid JSON: {err}") from None
    return text


def component_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"backend": ..., "judge": ...}`` for the flags given (env kwargs of ``make_env``)."""
    out: dict[str, Any] = {}
    for name in COMPONENTS:
        raw = getattr(args, f"component_{name}", None)
        if raw is not None:
            out[name] = parse_component(raw)
    return out


def add_env_options(parser: argparse.ArgumentParser) -> None:
    """``--tasks``, ``--dialect``, ``--set`` and the component flags: the env a data command plays
    (read back by :func:`mmsearch_gym.commands.eval.env_overrides`)."""
    parser.add_argument("--tasks", default=None, metavar="SOURCE",
                        help="task source (world:SPLIT, jsonl:PATH, infoseek:PATH, simplevqa:hf:NAME ...)")
    parser.add_argument("--dialect", default=None, choices=("mmsearch-r1", "deepmmsearch-r1", "tool-json"),
                        help="action grammar (default: the env's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="env_set",
                        help="another env override, JSON value")
    add_component_flags(parser)
