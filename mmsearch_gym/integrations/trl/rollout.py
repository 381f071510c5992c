"""The ``rollout_func`` route: multi-turn MMSearchEnv episodes generated for GRPO.

Generate until a closing tag of the dialect, step the env, append the tool result as a user
turn rendered with the chat template, go on until the episode ends. Tokens the model sampled
get ``env_mask`` 1; tool results and the chat-template glue around them get 0.

A VLM sees the task image but the tool results as text only: TRL 1.16 computes a
``rollout_func``'s image features from the dataset images alone (``GRPOTrainer._generate``
returns no images for this route), so result thumbnails placed in the completion would not
match the features of the loss's forward pass. The ``environment_factory`` route
(:mod:`.tool_env`) shows them, and is the default of the VLM recipes; a warning says so once
when a VLM trains here.

Envs step through the runner's slot commands (:class:`~mmsearch_gym.runner.EnvPool`): in this
process, or with ``executor="ray"`` on Ray actors (:class:`~mmsearch_gym.ray_runner.RayPool`), so
env work (search, reading, judging) leaves the trainer's process; the episodes are the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase, ProcessorMixin
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from mmsearch_gym.actions import Dialect, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.env_factory import unwrap_env
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.metrics import EpisodeResult
from mmsearch_gym.policies import text_only_content
from mmsearch_gym.reward import RewardBreakdown
from mmsearch_gym.runner import EnvPool, _LocalPool

from .envs import EnvSource, _episode_result, _searches_run, env_siblings
from .generation import (
    Generate,
    Processing,
    Prompt,
    TurnOutput,
    _cut_turn,
    _encode_prompt,
    _task_id_of,
    _tokenizer_of,
    _tool_turn_ids,
    hf_generate,
)

TEXT_RESULTS_WARNING = (
    "mmsearch_gym: on the rollout_func route a VLM gets the tool results as text only (TRL 1.16 feeds a "
    "rollout_func's model only the dataset images); use route='environment' (tool-json dialect) for result "
    "thumbnails as images")


@dataclass
class _Episode:
    """One rollout: token bookkeeping plus the schedule slot of the env that plays it."""

    slot: int
    task_id: str
    prompt_ids: list[int]
    images: list[Image.Image] | None
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    """The tool-result texts that entered the completion (masked tokens), in order."""
    turns: list[str] = field(default_factory=list)
    steps: int = 0
    done: bool = False
    finished: bool = False
    """True when the env itself ended the episode (answer or limit), False when tokens ran out."""
    breakdown: RewardBreakdown | None = None
    result: EpisodeResult | None = None
    """What the episode counts (:mod:`mmsearch_gym.metrics`), set when it is done."""
    last_info: dict[str, Any] = field(default_factory=dict)
    tool_calls: dict[str, int] = field(default_factory=lambda: {"image_search": 0, "text_search": 0})
    """Searches the env ran (sent to its backend) in this episode."""
    invalid_turns: int = 0


class MMSearchRollout:
    """A TRL ``rollout_func`` playing multi-turn MMSearchEnv episodes (see :func:`make_rollout_func`)."""

    __name__ = "mmsearch_rollout"

    def __init__(self, env: EnvSource, *, dialect: str | Dialect | None = None,
                 max_turns: int | None = None, max_turn_tokens: int = 256,
                 generation_kwargs: Mapping[str, Any] | None = None, executor: str = "local",
                 ray_address: str | None = None, workers: int = 1, **env_kwargs: Any) -> None:
        if max_turn_tokens < 1 or (max_turns is not None and max_turns < 1):
            raise ConfigError("max_turns and max_turn_tokens must be >= 1")
        self.pool = _env_pool(env_siblings(env, **env_kwargs).factory, executor, ray_address, workers)
        """Where the envs live, one per concurrent episode (slot), built on first use and reused."""
        try:
            sample = self.pool.run([("describe", 0)])[0][0]
            env_dialect, env_turns = sample["dialect"], int(sample["limits"]["max_turns"])
            self.dialect = get_dialect(dialect) if dialect is not None else get_dialect(env_dialect)
            if self.dialect.name != env_dialect:
                raise ConfigError(f"the rollout dialect {self.dialect.name!r} differs from the env's "
                                  f"{env_dialect!r}; build the env with dialect={self.dialect.name!r}")
        except BaseException:
            self.pool.close()
            raise
        self.max_turns = max_turns if max_turns is not None else env_turns
        self.max_turn_tokens = max_turn_tokens
        self.generation_kwargs = dict(generation_kwargs or {})

    _warned_vision = False

    @property
    def envs(self) -> Any:
        """The local route's envs (:class:`~mmsearch_gym.env_factory.SiblingEnvs`); ConfigError on Ray."""
        if not isinstance(self.pool, _LocalPool):
            raise ConfigError("with executor='ray' the envs live on Ray actors, not in this process")
        return self.pool.slots.envs

    def _env(self, index: int) -> MMSearchEnv:
        return unwrap_env(self.envs.get(index))

    def close(self) -> None:
        """Close the envs (and end the Ray actors; their search accounting joins this process's)."""
        self.pool.close()

    def __enter__(self) -> MMSearchRollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the TRL entry point ------------------------------------------------------------------
    def __call__(self, prompts: list[list[dict[str, Any]]], trainer: GRPOTrainer) -> dict[str, Any]:
        if isinstance(trainer.processing_class, ProcessorMixin) and not self._warned_vision:
            self._warned_vision = True
            warnings.warn(TEXT_RESULTS_WARNING, UserWarning, stacklevel=2)
        use_vllm = bool(getattr(trainer, "use_vllm", False))
        generate: Generate
        if use_vllm:
            def generate(batch: list[_Episode], max_new: int) -> list[TurnOutput]:
                return self._generate_vllm(trainer, batch)
        else:
            def generate(batch: list[_Episode], max_new: int) -> list[TurnOutput]:
                with (unwrap_model_for_generation(
                        trainer.model_wrapped, trainer.accelerator,
                        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
                        generation_kwargs=trainer.generation_kwargs,
                        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs) as model,
                      torch.no_grad()):
                    return hf_generate(model, trainer.processing_class, batch, max_new,
                                       stops=self.dialect.stop_sequences,
                                       generation_config=trainer.generation_config,
                                       eos_token_ids=trainer.eos_token_ids, **self.generation_kwargs)
        episodes = self.play(prompts, trainer.processing_class, generate,
                             budget=int(trainer.max_completion_length))
        return self._output(episodes, use_vllm)

    def play(self, prompts: Sequence[Prompt], processing: Processing, generate: Generate,
             *, budget: int) -> list[_Episode]:
        """Play one episode per prompt with ``generate`` (a batch of episodes -> new token ids)."""
        tokenizer = _tokenizer_of(processing)
        task_ids = [_task_id_of(prompt) for prompt in prompts]
        resets = self.pool.run([("reset", slot, task_id, None) for slot, task_id in enumerate(task_ids)])
        episodes = []
        for slot, (prompt, task_id, (_obs, info, _elapsed)) in enumerate(zip(prompts, task_ids, resets, strict=True)):
            prompt_ids, images, vision = _encode_prompt(processing, prompt)
            episodes.append(_Episode(slot=slot, task_id=task_id, prompt_ids=prompt_ids, images=images,
                                     vision=vision, last_info=info))
        for _turn in range(self.max_turns):
            active = [ep for ep in episodes if not ep.done]
            if not active:
                break
            room = [budget - len(ep.completion_ids) for ep in active]
            max_new = max(1, min(self.max_turn_tokens, max(room)))
            turns = [_cut_turn(tokenizer, ids, logps, self.dialect.stop_sequences, min(left, self.max_turn_tokens))
                     for left, (ids, logps) in zip(room, generate(active, max_new), strict=True)]
            steps = self.pool.run([("step", ep.slot, turn[2]) for ep, turn in zip(active, turns, strict=True)])
            ending = [(ep, finished) for ep, turn, step in zip(active, turns, steps, strict=True)
                      if (finished := self._advance(ep, *turn, step, tokenizer, processing, budget)) is not None]
            self._close(ending, tokenizer)
        # out of turns on our side: the env decides what the episode earned
        self._close([(ep, False) for ep in episodes if not ep.done], tokenizer)
        return episodes

    # -- one turn -------------------------------------------------------------------------
    def _advance(self, ep: _Episode, ids: list[int], logps: list[float] | None, text: str,
                 step: tuple[Any, ...], tokenizer: PreTrainedTokenizerBase, processing: Processing,
                 budget: int) -> bool | None:
        """Add a turn and the env's reply to it; whether the episode ends (finished by the env
        or not), or None when it goes on."""
        ep.completion_ids += ids
        ep.env_mask += [1] * len(ids)
        ep.logprobs += logps if logps is not None else [0.0] * len(ids)
        ep.turns.append(text)
        _obs, _reward, terminated, truncated, info, _elapsed = step
        ep.steps += 1
        ep.last_info = info
        ep.tool_calls = _searches_run(info)
        ep.invalid_turns = int(info["invalid_turns"])
        if terminated or truncated:
            ep.breakdown = info["reward_breakdown"]
            return True
        # the step's new messages end with the tool result (as SFT renders recorded results)
        result = text_only_content(info["messages"][-1]["content"])
        glue = _tool_turn_ids(processing, result, ends_with_eos=bool(ids) and ids[-1] == tokenizer.eos_token_id)
        if len(ep.completion_ids) + len(glue) >= budget:
            return False
        ep.observations.append(result)
        ep.completion_ids += glue
        ep.env_mask += [0] * len(glue)
        ep.logprobs += [0.0] * len(glue)
        return None

    def _close(self, ending: Sequence[tuple[_Episode, bool]], tokenizer: PreTrainedTokenizerBase) -> None:
        """End episodes (``finished``: the env ended it); those cut short are scored by their env."""
        unscored = [ep for ep, _ in ending if ep.breakdown is None]
        if unscored:
            for ep, (breakdown, _elapsed) in zip(unscored, self.pool.run([("score", ep.slot) for ep in unscored]),
                                             strict=True):
                ep.breakdown = breakdown
        for ep, finished in ending:
            self._finish(ep, tokenizer, finished=finished)

    def _finish(self, ep: _Episode, tokenizer: PreTrainedTokenizerBase, *, finished: bool) -> None:
        ep.result = _episode_result(ep.last_info, ep.breakdown)  # type: ignore[arg-type]
        if finished and ep.completion_ids and ep.completion_ids[-1] != tokenizer.eos_token_id:
            # the chat template's end of turn: not sampled, so masked; it tells TRL the
            # completion ended (otherwise it counts as clipped)
            ep.completion_ids.append(tokenizer.eos_token_id)
            ep.env_mask.append(0)
            ep.logprobs.append(0.0)
        ep.finished = finished
        ep.done = True

    # -- generation backends ----------------------------------------------------------------
    def _generate_vllm(self, trainer: GRPOTrainer,
                       batch: list[_Episode]) -> list[TurnOutput]:
        """One turn through TRL's vLLM helper (server or colocate mode); untested here (no GPU).

        TRL syncs the weights before calling the rollout function; we only add the dialect's
        stop strings to its sampling parameters and generate one continuation per episode.
        """
        generation = trainer.vllm_generation
        generation.generation_kwargs.setdefault("stop", list(self.dialect.stop_sequences))
        generation.generation_kwargs.setdefault("include_stop_str_in_output", True)
        seqs = [ep.prompt_ids + ep.completion_ids for ep in batch]
        images = [ep.images for ep in batch] if any(ep.images for ep in batch) else None
        _, completion_ids, logprobs, _ = generation.generate(prompts=seqs, images=images, num_generations=1)
        out = []
        for ids, lps in zip(completion_ids, logprobs or [None] * len(completion_ids), strict=True):
            flat = None if lps is None else [float("nan") if lp[0] is None else float(lp[0]) for lp in lps]
            out.append((list(ids), flat))
        return out

    # -- output ---------------------------------------------------------------------------
    def _output(self, episodes: list[_Episode], use_vllm: bool) -> dict[str, Any]:
        return {
            "prompt_ids": [ep.prompt_ids for ep in episodes],
            "completion_ids": [ep.completion_ids for ep in episodes],
            "logprobs": [ep.logprobs for ep in episodes] if use_vllm else None,
            "env_mask": [ep.env_mask for ep in episodes],
            "env_task_id": [ep.task_id for ep in episodes],
            "env_reward": [float(ep.breakdown.reward) for ep in episodes],  # type: ignore[union-attr]
            "reward_breakdown": [ep.breakdown.to_json() for ep in episodes],  # type: ignore[union-attr]
            "env_results": [ep.result for ep in episodes],
            "env_steps": [ep.steps for ep in episodes],
            "env_turns": [list(ep.turns) for ep in episodes],
            "env_observations": [list(ep.observations) for ep in episodes],
            "env_tool_calls": [dict(ep.tool_calls) for ep in episodes],
            "env_invalid_turns": [ep.invalid_turns for ep in episodes],
            "episode_finished": [ep.finished for ep in episodes],
        }


def make_rollout_func(env: EnvSource, dialect: str | Dialect | None = None,
                      max_turns: int | None = None, *, max_turn_tokens: int = 256,
                      generation_kwargs: Mapping[str, Any] | None = None, executor: str = "local",
                      ray_address: str | None = None, workers: int = 1, **env_kwargs: Any) -> MMSearchRollout:
    """A TRL ``rollout_func(prompts, trainer) -> dict`` that plays MMSearchEnv episodes.

    Args:
        env: env id, env instance or factory (one env per concurrent episode; envs share the
            task set and backend). The dataset must come from :func:`to_dataset` on the same
            tasks (prompts carry the ``task_id`` the env is reset with).
        dialect: must match the env's dialect (default: the env's).
        max_turns: assistant turns per episode on our side (default: the env's limit, which
            truncates the episode itself).
        max_turn_tokens: new tokens per turn; the whole completion is bounded by the trainer's
            ``max_completion_length`` (an episode that runs out is scored as the env would score
            it if it ended there).
        generation_kwargs: extra ``generate()`` arguments for the transformers backend.
        executor: ``"local"`` (envs in this process) or ``"ray"``: envs on ``workers`` Ray actors
            (episode ``i`` on actor ``i % workers``), each built from the same env description;
            every reset, step and score is a remote call, batched per turn, with the same results.
            Call ``close()`` when done to end the actors.
        ray_address: the Ray cluster for ``executor="ray"`` (see
            :class:`~mmsearch_gym.ray_runner.RayExecutor`).
        workers: Ray actors for ``executor="ray"`` (1 CPU each); 1 for the local route.

    The returned dict has ``prompt_ids``, ``completion_ids``, ``logprobs`` (vLLM only, else
    None), ``env_mask`` and the extra keys ``env_task_id``, ``env_reward``, ``reward_breakdown``, ``env_steps``,
    ``env_turns``, ``env_observations``, ``env_tool_calls``, ``env_invalid_turns``,
    ``env_results`` (each episode's :class:`~mmsearch_gym.metrics.EpisodeResult`) and
    ``episode_finished`` which TRL passes to the reward functions (see :func:`env_reward`).
    """
    return MMSearchRollout(env, dialect=dialect, max_turns=max_turns, max_turn_tokens=max_turn_tokens,
                           generation_kwargs=generation_kwargs, executor=executor, ray_address=ray_address,
                           workers=workers, **env_kwargs)


def _env_pool(factory: Any, executor: str, ray_address: str | None, workers: int) -> EnvPool:
    """The rollout's envs: in this process, or on ``workers`` Ray actors."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if executor == "ray":
        from mmsearch_gym.ray_runner import RayExecutor

        return RayExecutor(ray_address)(factory, workers)
    if executor != "local":
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if ray_address is not None or workers != 1:
        raise ConfigError("ray_address and workers > 1 go with executor='ray'")
    return _LocalPool(factory, None)
