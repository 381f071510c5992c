"""veRL adapter: train with veRL (multi-turn GRPO on Ray) on mmsearch_gym's env.

* :mod:`.data` -- any TaskSet to veRL's parquet dataset and back (needs pyarrow only);
* :mod:`.reward` -- ``compute_score``, veRL's custom-reward signature, returning
  :func:`mmsearch_gym.reward.score_episode`'s reward and breakdown (needs nothing from veRL);
* :mod:`.tools` -- veRL ``BaseTool`` subclasses (``text_search``, ``image_search``) that step a
  per-trajectory :class:`~mmsearch_gym.env.MMSearchEnv`, so searches go through the env's
  backend and cache (recorded, replayable) and its budgets;
* :mod:`.agent_loop` -- ``MMSearchAgentLoop``, registered as ``mmsearch_agent``: drives one env
  per trajectory in the env's dialect; parsing, budgets, feedback and reward are the env's,
  tool-result tokens get ``response_mask`` 0;
* :mod:`.cpu` -- veRL's trainer without a GPU (``VERL_USE_EXTERNAL_MODULES`` loads it): a ``cpu``
  platform with gloo and veRL's FSDP engine (:mod:`.cpu_platform`) and an ``hf`` rollout that
  serves generation with ``model.generate`` (:mod:`.hf_rollout`); ``policies/verl-tiny-cpu.yaml``.

Tested with verl 0.9.1 (transformers 5.10.4, torch 2.13.0 CPU); install with
``pip install -e ".[verl]"`` in its own virtualenv (veRL pins transformers<5.11).
Only :mod:`.tools`, :mod:`.agent_loop` and the CPU modules import veRL.
"""

from pathlib import Path

from mmsearch_gym.integrations.verl.data import (
    from_verl_rows,
    read_parquet,
    to_verl_rows,
    write_parquet,
)
from mmsearch_gym.integrations.verl.reward import compute_score
from mmsearch_gym.resources import resource_path

__all__ = ["compute_score", "from_verl_rows", "read_parquet", "recipe_path", "to_verl_rows", "write_parquet"]


def recipe_path(name: str) -> Path:
    """Where a shipped veRL recipe lives (``verl-qwen2.5-vl-7b.yaml``, ``verl-tools.yaml`` ...)."""
    return resource_path("policies", name)
