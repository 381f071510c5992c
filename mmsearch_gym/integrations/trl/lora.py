"""Parameter-efficient SFT: LoRA adapters on the language model, vision tower and projector frozen.

DeepMMSearch-R1's cold start trains LoRA adapters on the language model of Qwen2.5-VL while the
vision encoder and the vision-language projector stay frozen. :class:`LoraSpec` is that recipe
(``"lora": {...}`` in a ``policies/*.json`` file), :func:`freeze_vision` freezes the vision side
of any model, and :func:`apply_lora` wraps a model with PEFT adapters on the language model
only (vision modules are excluded even when they share a projection's name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from mmsearch_gym.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

__all__ = ["VISION_MODULES", "LoraSpec", "apply_lora", "freeze_vision", "trainable_parameters"]

VISION_MODULES = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "mm_projector")
"""Module names of the vision encoder and projector in Hugging Face VLMs (Qwen2/2.5/3-VL keep
both under ``visual``, the projector being ``visual.merger``; LLaVA-style models use
``vision_tower`` and ``multi_modal_projector``)."""

_EXCLUDE = r".*\b(" + "|".join(VISION_MODULES) + r")\b.*"


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters of the SFT stage (defaults: DeepMMSearch-R1's rank 8 on the LM's attention)."""

    r: int = 8
    """Adapter rank."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by ``alpha / r``)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Names of the language model's linear layers that get adapters."""

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("lora needs r >= 1, alpha >= 1 and 0 <= dropout < 1")
        if isinstance(self.target_modules, str) or not self.target_modules:
            raise ConfigError("lora.target_modules must be a non-empty list of module names")
        object.__setattr__(self, "target_modules", tuple(str(m) for m in self.target_modules))

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoraSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown lora fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(data))


def freeze_vision(model: PreTrainedModel) -> int:
    """Stop gradients into the vision encoder and projector; returns how many parameters froze."""
    frozen = 0
    for name, parameter in model.named_parameters():
        if any(part in VISION_MODULES for part in name.split(".")):
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def apply_lora(model: PreTrainedModel, spec: LoraSpec, *, checkpointing: bool = False) -> PeftModel:
    """``model`` with LoRA adapters on the language model; every other weight is frozen."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ConfigError(f"LoRA needs peft: pip install 'mmsearch-gym[trl]' ({err})") from None
    if checkpointing and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()  # gradients must reach the adapters through checkpoints
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), exclude_modules=_EXCLUDE, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def trainable_parameters(model: PreTrainedModel | PeftModel) -> int:
    """How many parameters the optimiser will update."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
