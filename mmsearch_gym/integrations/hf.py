"""The integrations' one Hugging Face loader: a local directory or hub id -> ``(model, processing)``.

A vision-language model (its config has a ``vision_config``) comes with its ``AutoProcessor``,
anything else is a causal LM with its tokenizer; a tiny model saved by
:mod:`mmsearch_gym.integrations.tiny_models` is loaded by that module. Tokenizers pad on the
left (decoder-only batching). Used by the TRL recipes and :class:`TransformersPolicy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

__all__ = ["load_pretrained", "resolve_dtype"]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A torch dtype from its name (``"bfloat16"``); ``"auto"`` and None pass through."""
    import torch

    if isinstance(dtype, str) and dtype != "auto":
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
        return value
    return dtype


def load_pretrained(spec: str | Path, *, dtype: str | torch.dtype | None = None, trust_remote_code: bool = False,
                    model_kwargs: Mapping[str, Any] | None = None
                    ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | ProcessorMixin]:
    """``(model, tokenizer or processor)`` from a local directory or a hub id.

    ``dtype``: a torch dtype, its name or ``"auto"`` (None: the transformers default);
    ``model_kwargs`` go to ``from_pretrained`` (their ``dtype`` is resolved the same way).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

    kwargs = dict(model_kwargs or {})
    dtype = resolve_dtype(kwargs.pop("dtype", dtype))
    where = str(spec)
    if (Path(where) / "mmsearch_tiny.json").exists():
        from mmsearch_gym.integrations.tiny_models import load_tiny_model

        model, processing = load_tiny_model(where)
        if dtype is not None and not isinstance(dtype, str):
            model.to(dtype)  # type: ignore[arg-type]
        return model, processing
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code)
        if getattr(config, "vision_config", None) is None:
            tokenizer = AutoTokenizer.from_pretrained(where, padding_side="left", trust_remote_code=trust_remote_code)
            return AutoModelForCausalLM.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs), tokenizer
        from transformers import AutoModelForImageTextToText
        try:
            processor = AutoProcessor.from_pretrained(where, padding_side="left", trust_remote_code=trust_remote_code)
        except (ValueError, TypeError, KeyError, ImportError) as err:
            raise ConfigError(f"cannot load the processor of the VLM {where} ({err.__class__.__name__}: {err}); "
                              "if it needs torchvision for video, build an image-only processor and use "
                              "TransformersPolicy(model, processor)") from None
        model = AutoModelForImageTextToText.from_pretrained(where, trust_remote_code=trust_remote_code, **kwargs)
        return model, processor
    except OSError as err:
        raise ConfigError(f"cannot load a model from {where}: {err}") from err
