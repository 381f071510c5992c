"""TRL trainers wired to MMSearchEnv (SFT with assistant-only loss, GRPO on either route) and a
greedy evaluation of a model through the rollout route."""

from __future__ import annotations

import contextlib
import copy
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import datasets
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, TrainerCallback, TrainingArguments
from trl import GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from mmsearch_gym.errors import ConfigError

from .data import _text_of, _with_image
from .envs import EnvSource, env_factory
from .generation import Processing, TurnOutput, _tokenizer_of, hf_generate
from .lora import LoraSpec, apply_lora
from .lora import freeze_vision as freeze_vision_side
from .models import _is_vlm
from .rewards import env_reward, episode_accuracy, episode_metrics
from .rollout import _Episode, make_rollout_func
from .tool_env import make_tool_env_factory, prepare_tool_calling

ConfigT = TypeVar("ConfigT", bound=TrainingArguments)


_EXPERIMENTAL = r"You are using '(rollout_func|environment_factory)', which is an experimental feature"


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Hide TRL's notice that ``rollout_func`` / ``environment_factory`` are experimental, for
    this call only (the user's process environment and warning filters are left as they were)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_EXPERIMENTAL, category=UserWarning)
        yield


def _config(cls: type[ConfigT], values: ConfigT | Mapping[str, Any] | None, output_dir: Path,
            **defaults: Any) -> ConfigT:
    if isinstance(values, cls):
        return values
    given = dict(values or {})
    if "gradient_checkpointing" in given:  # the deprecated name still wins over our default
        defaults.pop("activation_checkpointing", None)
    options = {**defaults, **given}
    options.setdefault("output_dir", str(output_dir))
    options.setdefault("report_to", [])
    options.setdefault("save_strategy", "no")
    options.setdefault("logging_steps", 1)
    if not torch.cuda.is_available():
        options.setdefault("use_cpu", True)
        options.setdefault("bf16", False)
    return cls(**options)


def make_sft_trainer(model: PreTrainedModel, processing: Processing, dataset: datasets.Dataset, *,
                     args: SFTConfig | Mapping[str, Any] | None = None, output_dir: str | Path = "runs/sft",
                     callbacks: Sequence[TrainerCallback] = (), lora: LoraSpec | Mapping[str, Any] | None = None,
                     freeze_vision: bool = False) -> SFTTrainer:
    """TRL's SFTTrainer with assistant-only loss (tool results never reach the loss).

    ``freeze_vision`` freezes a VLM's vision tower and projector; ``lora`` trains LoRA adapters
    on the language model instead of all its weights (:mod:`.lora`; DeepMMSearch-R1's cold
    start does both). The trainer's model is then a PEFT model (``merge_and_unload()`` gives
    back a plain one).
    """
    config = _config(SFTConfig, args, Path(output_dir), assistant_only_loss=True, max_length=2048,
                     activation_checkpointing=False, remove_unused_columns=not _is_vlm(processing))
    if not config.assistant_only_loss:
        raise ConfigError("SFT on search episodes needs assistant_only_loss=True (tool results must be masked)")
    if _is_vlm(processing) and "tools" in dataset.column_names:
        dataset = _inline_tools(dataset, processing)
    if freeze_vision:
        freeze_vision_side(model)
    if lora is not None:
        spec = lora if isinstance(lora, LoraSpec) else LoraSpec.from_json(lora)
        checkpointing = bool(getattr(config, "gradient_checkpointing", False)
                             or getattr(config, "activation_checkpointing", False))
        model = apply_lora(model, spec, checkpointing=checkpointing)  # type: ignore[assignment]
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=processing,
                      callbacks=list(callbacks))


def _inline_tools(dataset: datasets.Dataset, processing: Processing) -> datasets.Dataset:
    """Render the ``tools`` column into the system message with the processor's own template.

    TRL 1.16's vision SFT collator calls the chat template without ``tools``, while its GRPO
    environment route renders them: without this the SFT prompts would lack the tool block.
    """
    marker = "\x00SYSTEM\x00"

    def system_text(system: str, tools: str) -> str:
        rendered = processing.apply_chat_template(
            [{"role": "system", "content": [{"type": "text", "text": marker}]}], tools=json.loads(tools),
            tokenize=False)
        rendered = rendered[0] if isinstance(rendered, list) else rendered
        end = rendered.rfind(_tokenizer_of(processing).eos_token or "<|im_end|>")
        body = rendered[rendered.index(marker):end if end != -1 else None]
        return body.replace(marker, system)

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(m) for m in row["messages"]]
        first = messages[0]
        if first["role"] == "system":
            text = _text_of(first["content"])
            first["content"] = [{"type": "text", "text": system_text(text, row["tools"])}]
        return {"messages": messages}

    return dataset.map(convert, remove_columns=["tools"])


def make_grpo_trainer(model: PreTrainedModel, processing: Processing, env: EnvSource,
                      dataset: datasets.Dataset, *, route: str = "rollout",
                      args: GRPOConfig | Mapping[str, Any] | None = None, output_dir: str | Path = "runs/grpo",
                      max_turn_tokens: int = 256, vision: bool | None = None,
                      callbacks: Sequence[TrainerCallback] = (), **env_kwargs: Any) -> GRPOTrainer:
    """A GRPOTrainer wired to MMSearchEnv through ``route`` (``"rollout"`` or ``"environment"``).

    The dataset comes from :func:`to_dataset` with the same ``route``. The reward is the env's:
    :func:`env_reward` for the rollout route; ``MMSearchToolEnv.get_reward`` (plus the weight-0
    :func:`episode_accuracy`, which steps the final answer and logs metrics) for the tool route.
    """
    vision = _is_vlm(processing) if vision is None else vision
    if route == "rollout":
        rollout = make_rollout_func(env, max_turn_tokens=max_turn_tokens, **env_kwargs)
        config = _config(GRPOConfig, args, Path(output_dir), activation_checkpointing=False,
                         remove_unused_columns=False, reward_weights=[1.0])
        with _quiet_experimental():
            return GRPOTrainer(model=model, reward_funcs=[env_reward], args=config, train_dataset=dataset,
                               processing_class=processing, rollout_func=rollout, callbacks=list(callbacks))
    if route == "environment":
        factory = env_factory(env, **env_kwargs)
        environment_class = make_tool_env_factory(factory, vision=vision)
        probe = factory()
        config = _config(GRPOConfig, args, Path(output_dir), activation_checkpointing=False,
                         remove_unused_columns=False, reward_weights=[0.0],
                         max_tool_calling_iterations=probe.max_turns)
        prepare_tool_calling(processing)
        with _quiet_experimental():
            return GRPOTrainer(model=model, reward_funcs=[episode_accuracy], args=config, train_dataset=dataset,
                               processing_class=processing, environment_factory=environment_class,
                               callbacks=list(callbacks))
    raise ConfigError(f"route must be 'rollout' or 'environment', got {route!r}")


def evaluate_model(model: PreTrainedModel, processing: Processing, env: EnvSource,
                   dataset: datasets.Dataset, *, batch_size: int = 16, max_completion_length: int = 512,
                   max_turn_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
                   seed: int = 0, progress: bool = True, **env_kwargs: Any) -> dict[str, Any]:
    """Play every prompt of a :func:`to_dataset` dataset once (greedy by default, else sampled
    at ``temperature``) and report the env's numbers (``metrics``: :func:`episode_metrics`, the
    definitions of :mod:`mmsearch_gym.metrics`) and each episode."""
    rollout = make_rollout_func(env, max_turn_tokens=max_turn_tokens, **env_kwargs)
    torch.manual_seed(seed)
    was_training = model.training
    model.eval()
    config = copy.deepcopy(model.generation_config)
    config.do_sample = do_sample
    config.temperature = temperature if do_sample else None
    config.top_p = config.top_k = None
    episodes: list[_Episode] = []
    prompts = dataset["prompt"]
    if "image" in dataset.column_names:
        prompts = [_with_image(p, im) for p, im in zip(prompts, dataset["image"], strict=False)]
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="evaluating", disable=not progress):
            chunk = prompts[start:start + batch_size]

            def generate(batch: list[_Episode], max_new: int) -> list[TurnOutput]:
                with torch.no_grad():
                    return hf_generate(model, processing, batch, max_new, stops=rollout.dialect.stop_sequences,
                                       generation_config=config)

            episodes += rollout.play(chunk, processing, generate, budget=max_completion_length)
    finally:
        model.train(was_training)
        rollout.close()
    return {
        "metrics": episode_metrics([ep.result for ep in episodes]),  # type: ignore[misc]
        "episodes": [{"task_id": ep.task_id, "turns": ep.turns, "breakdown": ep.breakdown.to_json(),  # type: ignore[union-attr]
                      "finished": ep.finished} for ep in episodes],
    }
