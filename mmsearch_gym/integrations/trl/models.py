"""Models for the TRL recipes: tiny random models built locally, and hub / local checkpoints
through the integrations' one Hugging Face loader."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, ProcessorMixin
from trl.chat_template_utils import qwen2_5_chat_template, qwen3_vl_chat_template

from mmsearch_gym.tasks import TaskSet

from ..hf import load_pretrained
from .generation import Processing


def default_chat_template(kind: str = "text") -> str:
    """TRL's bundled chat template for tiny models: Qwen2.5 (text) or Qwen3-VL (vision); TRL
    recognises both for tool calling and has training variants for assistant-only loss."""
    return qwen3_vl_chat_template if kind == "vlm" else qwen2_5_chat_template


def make_tiny_model(out_dir: str | Path, *, kind: str = "text", size: str = "tiny",
                    tasks: TaskSet | None = None, texts: Sequence[str] = (), vocab_size: int = 1024,
                    seed: int = 0, extra_tokens: Sequence[str] = (), image_side: int = 56) -> Path:
    """Build and save a random tiny model plus a tokenizer trained on the task texts (no hub).

    ``extra_tokens``: whole words kept as single tokens (see ``tiny_models.build_tokenizer``).
    ``image_side``: a VLM sees each image at about ``image_side``² pixels.
    """
    from mmsearch_gym.integrations.tiny_models import save_tiny_model

    corpus = list(texts)
    if tasks is not None:
        for task in tasks:
            corpus.append(task.question)
            corpus.extend(task.answers)
    return save_tiny_model(out_dir, chat_template=default_chat_template(kind), texts=corpus, kind=kind,
                           size=size, vocab_size=vocab_size, seed=seed, extra_tokens=extra_tokens,
                           image_side=image_side)


def load_model(spec: str | Path, *, model_kwargs: Mapping[str, Any] | None = None
               ) -> tuple[PreTrainedModel, Processing]:
    """``(model, processing_class)`` from a local directory or a hub id (VLMs get a processor);
    see :func:`mmsearch_gym.integrations.hf.load_pretrained`."""
    return load_pretrained(spec, model_kwargs=model_kwargs)


def _is_vlm(processing: Processing) -> bool:
    return isinstance(processing, ProcessorMixin)
