"""``mmsearch-gym train RECIPE`` for the TRL recipes (``policies/*.json``: ``sft``, ``grpo``,
``sft+grpo``)."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
import trl
from transformers import PreTrainedModel, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mmsearch_gym.actions import Dialect
from mmsearch_gym.errors import ConfigError
from mmsearch_gym.tasks import TaskSet

from .data import _text_of, to_dataset
from .envs import EnvMaker, env_factory
from .generation import Processing
from .lora import LoraSpec, trainable_parameters
from .models import load_model, make_tiny_model
from .sft_data import build_sft_dataset
from .trainers import evaluate_model, make_grpo_trainer, make_sft_trainer

TRL_VERSION = trl.__version__


_STAGES = {"sft": ("sft",), "grpo": ("grpo",), "sft+grpo": ("sft", "grpo")}
_RECIPE_KEYS = {"name", "description", "trainer", "model", "model_kwargs", "env", "categories", "route", "images",
                "system_prompt", "max_turn_tokens", "sft", "grpo", "grpo_tasks", "eval", "seed", "torch_threads",
                "lora", "freeze_vision", "executor", "ray_address", "env_workers"}


def _env_spec(spec: str | Mapping[str, Any], what: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping) and isinstance(spec.get("id"), str):
        return spec["id"], dict(spec.get("kwargs") or {})
    raise ConfigError(f"recipe {what} must be an env id or {{'id': ..., 'kwargs': {{...}}}}, got {spec!r}")


def _route_of(recipe: Mapping[str, Any]) -> str:
    """The recipe's GRPO route: its ``route``, else ``environment`` for VLM recipes (``images``)
    and ``rollout`` for text ones.

    Only the environment route shows a VLM the result thumbnails (TRL 1.16's tool loop renders a
    tool's image blocks into the completion and feeds their pixels to the model; a
    ``rollout_func``'s image features come from the dataset images alone, so there the results
    arrive as text).
    """
    route = recipe.get("route")
    if route is not None:
        return str(route)
    return "environment" if recipe.get("images") else "rollout"


def _recipe_system_prompt(value: str | None, dialect: Dialect) -> str | None:
    """``null``: the dialect's prompt; ``"short"``: one line plus the dialect's action hint (for
    tiny CPU models, whose cost grows with every prompt token); any other string: itself."""
    if value is None:
        return None
    if value == "short":
        return "Answer the question. " + dialect.action_hint()
    if isinstance(value, str):
        return value
    raise ConfigError(f"system_prompt must be null, 'short' or a string, got {value!r}")


def _recipe_model(recipe: Mapping[str, Any], output_dir: Path, tasks: TaskSet,
                  sft_data: datasets.Dataset | None) -> tuple[PreTrainedModel, Processing, Path | None]:
    spec = recipe.get("model")
    if isinstance(spec, Mapping) and "tiny" in spec:
        options = dict(spec["tiny"] or {})
        if options.pop("entity_tokens", False):  # the world's country names as single tokens
            from mmsearch_gym.world import load_knowledge
            options["extra_tokens"] = [n for entity in load_knowledge().countries() for n in entity.answers]
        texts: list[str] = []
        if sft_data is not None:
            for row in sft_data["messages"]:
                texts += [m["content"] if isinstance(m["content"], str) else _text_of(m["content"]) for m in row]
            if "tools" in sft_data.column_names:
                texts += list(sft_data["tools"][:1])
        path = make_tiny_model(output_dir / "init", tasks=tasks, texts=texts, **options)
        model, processing = load_model(path)
        return model, processing, path
    if isinstance(spec, (str, Path)):
        model, processing = load_model(spec, model_kwargs=recipe.get("model_kwargs"))
        return model, processing, None
    raise ConfigError(f"recipe model must be a path / hub id or {{'tiny': {{...}}}}, got {spec!r}")


def _save(model: PreTrainedModel, processing: Processing, path: Path, tiny: Path | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path))
    processing.save_pretrained(str(path))
    if tiny is not None:
        (path / "mmsearch_tiny.json").write_text((tiny / "mmsearch_tiny.json").read_text(encoding="utf-8"),
                                                 encoding="utf-8")
    return path


class _Progress(TrainerCallback):
    """Keeps the per-step logs (reward, loss, env metrics) for the recipe summary."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None,
               **kwargs: Any) -> None:
        if logs:
            self.logs.append({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})


def train_recipe(recipe: Mapping[str, Any], *, output_dir: Path) -> dict[str, Any]:
    """Run a training recipe (``policies/*.json``, trainer ``sft``, ``grpo`` or ``sft+grpo``).

    Recipe fields:

    * ``model``: a hub id / path, or ``{"tiny": {kind, size, vocab_size, seed, entity_tokens}}`` to
      build a random tiny model locally (``entity_tokens``: the world's country names become
      single tokens); ``model_kwargs`` (e.g. ``{"dtype": "bfloat16"}``);
    * ``env``: an id or ``{"id", "kwargs"}`` (the training tasks and tools); ``categories``
      keeps only these task categories; ``route``: ``rollout`` or ``environment`` (default:
      ``environment`` when ``images`` is set, the route on which result thumbnails reach a VLM,
      with the env's dialect defaulting to ``tool-json``; else ``rollout``); ``images``: give
      VLMs the image column; ``system_prompt``: null, ``"short"`` or text;
      ``max_turn_tokens``; ``executor``: ``"local"`` or ``"ray"`` (the GRPO rollout route's envs on
      ``env_workers`` Ray actors at ``ray_address``, so env work leaves the trainer's process);
    * ``sft``: SFTConfig fields plus ``teacher``, ``episodes``, ``balance``, ``thumbnails``,
      ``trajectories``; ``grpo``: GRPOConfig fields; ``grpo_tasks``: how many tasks GRPO
      samples from;
    * ``lora``: LoRA adapters for the SFT stage (:class:`~.lora.LoraSpec` fields ``r``,
      ``alpha``, ``dropout``, ``target_modules``; merged into the model after SFT);
      ``freeze_vision``: freeze a VLM's vision tower and projector during SFT;
    * ``eval``: ``{"env", "episodes", "categories", "max_completion_length"}``, a greedy
      evaluation before and after training; ``torch_threads``: CPU threads (tiny models run
      faster on one); ``seed``.

    Writes checkpoints and ``summary.json`` under ``output_dir`` and returns the summary.
    """
    recipe = _checked(recipe)
    stages = _STAGES[recipe["trainer"]]
    if recipe.get("torch_threads"):
        torch.set_num_threads(int(recipe["torch_threads"]))
    run = _setup(recipe, Path(output_dir))
    started = time.perf_counter()
    summary: dict[str, Any] = {"recipe": recipe.get("name"), "trainer": recipe["trainer"], "route": run.route,
                               "dialect": run.dialect.name, "env": run.env_id, "trl_version": TRL_VERSION,
                               "output_dir": str(run.output_dir), "stages": {}}
    sft_options = dict(recipe.get("sft") or {})
    sft_data = _sft_dataset(run, sft_options) if "sft" in stages else None
    model, processing, run.tiny = _recipe_model(recipe, run.output_dir, run.tasks, sft_data)
    evaluation = _eval_data(run)
    if evaluation is not None:
        summary["eval_before"] = _evaluate(run, model, processing, evaluation)
    if sft_data is not None:
        model, summary["stages"]["sft"] = _train_sft(run, model, processing, sft_data, sft_options)
    if "grpo" in stages:
        model, summary["stages"]["grpo"] = _train_grpo(run, model, processing)
    if evaluation is not None:
        summary["eval_after"] = _evaluate(run, model, processing, evaluation)
    summary["final_model"] = str(_save(model, processing, run.output_dir / "final", run.tiny))
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    (run.output_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str),
                                                 encoding="utf-8")
    return summary


@dataclass
class _Run:
    """What the stages of one recipe run share."""

    recipe: Mapping[str, Any]
    output_dir: Path
    env_id: str
    env_kwargs: dict[str, Any]
    factory: EnvMaker
    tasks: TaskSet
    dialect: Dialect
    route: str
    images: bool
    seed: int
    system_prompt: str | None
    max_turn_tokens: int
    tiny: Path | None = None


def _checked(recipe: Mapping[str, Any]) -> dict[str, Any]:
    recipe = dict(recipe)
    if recipe.get("trainer") not in _STAGES:
        raise ConfigError(f"the TRL integration's recipe trainer must be 'sft', 'grpo' or 'sft+grpo', "
                          f"got {recipe.get('trainer')!r}")
    unknown = sorted(set(recipe) - _RECIPE_KEYS)
    if unknown:
        raise ConfigError(f"unknown recipe fields {unknown}; known: {sorted(_RECIPE_KEYS)}")
    if recipe.get("lora") is not None:
        LoraSpec.from_json(recipe["lora"])  # fail before any episode is recorded
    executor = recipe.get("executor", "local")
    if executor not in ("local", "ray"):
        raise ConfigError(f"recipe executor must be 'local' or 'ray', got {executor!r}")
    if executor == "ray" and _route_of(recipe) != "rollout":
        raise ConfigError("recipe executor 'ray' steps the envs of the GRPO rollout route; set route: 'rollout'")
    if executor == "local" and (recipe.get("ray_address") is not None or "env_workers" in recipe):
        raise ConfigError("recipe ray_address and env_workers go with executor: 'ray'")
    if executor == "ray" and recipe.get("categories") is not None:  # a filtered task set has no JSON form
        raise ConfigError("recipe executor 'ray' builds the envs from the env description on the actors; "
                          "it cannot filter categories (use an env whose tasks are already those categories)")
    return recipe


def _executor_options(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The rollout's ``executor``, ``ray_address`` and ``workers`` (nothing for the local default)."""
    if recipe.get("executor", "local") == "local":
        return {}
    return {"executor": "ray", "ray_address": recipe.get("ray_address"), "workers": int(recipe.get("env_workers", 1))}


def _setup(recipe: Mapping[str, Any], output_dir: Path) -> _Run:
    output_dir.mkdir(parents=True, exist_ok=True)
    env_id, env_kwargs = _env_spec(recipe.get("env", "MMSearch-Train-v0"), "env")
    route = _route_of(recipe)
    if route == "environment":
        env_kwargs.setdefault("dialect", "tool-json")  # the only dialect of TRL's tool loop
    factory = env_factory(env_id, categories=recipe.get("categories"), **env_kwargs)
    base = factory()
    return _Run(recipe=recipe, output_dir=output_dir, env_id=env_id, env_kwargs=env_kwargs, factory=factory,
                tasks=base.tasks, dialect=base.dialect, route=route,
                images=bool(recipe.get("images", False)), seed=int(recipe.get("seed", 0)),
                system_prompt=_recipe_system_prompt(recipe.get("system_prompt"), base.dialect),
                max_turn_tokens=int(recipe.get("max_turn_tokens", 256)))


def _sft_dataset(run: _Run, sft_options: dict[str, Any]) -> datasets.Dataset:
    """The SFT transcripts; pops the data fields from ``sft_options`` (the rest is SFTConfig)."""
    return build_sft_dataset(
        sft_options.pop("trajectories", None), env=run.factory, policy=sft_options.pop("teacher", "oracle"),
        episodes=sft_options.pop("episodes", None), balance=sft_options.pop("balance", 0.5),
        route=run.route, images=run.images, thumbnails=bool(sft_options.pop("thumbnails", False)), seed=run.seed,
        system_prompt=run.system_prompt, work_dir=run.output_dir / "sft")


def _eval_data(run: _Run) -> tuple[EnvMaker, datasets.Dataset] | None:
    options = run.recipe.get("eval")
    if not options:
        return None
    eval_id, eval_kwargs = _env_spec(options.get("env", "MMSearch-v0"), "eval.env")
    factory = env_factory(eval_id, **eval_kwargs)
    data = to_dataset(factory().tasks, dialect=run.dialect, images=run.images, n=options.get("episodes"),
                      categories=options.get("categories"), system_prompt=run.system_prompt)
    return factory, data


def _evaluate(run: _Run, model: PreTrainedModel, processing: Processing,
              evaluation: tuple[EnvMaker, datasets.Dataset]) -> dict[str, float]:
    factory, data = evaluation
    report = evaluate_model(model, processing, factory, data, max_turn_tokens=run.max_turn_tokens,
                            max_completion_length=int(run.recipe["eval"].get("max_completion_length", 512)))
    return report["metrics"]


def _train_sft(run: _Run, model: PreTrainedModel, processing: Processing, data: datasets.Dataset,
               sft_options: Mapping[str, Any]) -> tuple[PreTrainedModel, dict[str, Any]]:
    progress = _Progress()
    lora = run.recipe.get("lora")
    trainer = make_sft_trainer(model, processing, data, args={"seed": run.seed, **sft_options},
                               output_dir=run.output_dir / "sft", callbacks=[progress], lora=lora,
                               freeze_vision=bool(run.recipe.get("freeze_vision", False)))
    trainable = trainable_parameters(trainer.model)
    result = trainer.train()
    trained = trainer.model.merge_and_unload() if lora is not None else trainer.model  # LoRA: a plain model again
    path = _save(trained, processing, run.output_dir / "sft" / "final", run.tiny)
    return trained, {"examples": len(data), "steps": trainer.state.global_step,
                     "train_loss": float(result.training_loss), "path": str(path),
                     "trainable_parameters": trainable, "lora": lora,
                     "loss_curve": [log["loss"] for log in progress.logs if "loss" in log]}


def _train_grpo(run: _Run, model: PreTrainedModel,
                processing: Processing) -> tuple[PreTrainedModel, dict[str, Any]]:
    grpo_options = dict(run.recipe.get("grpo") or {})
    grpo_options.setdefault("seed", run.seed)
    data = to_dataset(run.tasks, dialect=run.dialect, images=run.images, route=run.route,
                      n=run.recipe.get("grpo_tasks"), shuffle=True, seed=run.seed, system_prompt=run.system_prompt)
    progress = _Progress()
    remote = _executor_options(run.recipe)
    # Ray actors build their envs from the JSON description (the local maker holds open caches)
    env: Any = {"id": run.env_id, "kwargs": run.env_kwargs} if remote else run.factory
    trainer = make_grpo_trainer(model, processing, env, data, route=run.route, args=grpo_options,
                                output_dir=run.output_dir / "grpo", max_turn_tokens=run.max_turn_tokens,
                                callbacks=[progress], **remote)
    try:
        result = trainer.train()
    finally:
        close = getattr(getattr(trainer, "rollout_func", None), "close", None)
        if close is not None:  # the rollout's envs (and Ray actors)
            close()
    path = _save(trainer.model, processing, run.output_dir / "grpo" / "final", run.tiny)
    steps = [log for log in progress.logs if "reward" in log]
    return trainer.model, {
        "tasks": len(data), "steps": trainer.state.global_step, "train_loss": float(result.training_loss),
        "path": str(path), "reward_curve": [log["reward"] for log in steps],
        "accuracy_curve": [log.get("mmsearch/accuracy") for log in steps],
    }
