"""Tiny random models for CPU tests, the CPU recipes and the learning benchmark (no hub needed).

A real GRPO/SFT pipeline needs a model, a tokenizer with a chat template the trainer knows, and
(for vision-language models) a processor. None of them can be downloaded here, so this module
builds all three locally:

* a byte-level BPE tokenizer trained with the ``tokenizers`` library on the dialects' prompts and
  any task text you pass, with Qwen's chat special tokens and every action tag of the dialects as
  a single token (so a stop sequence like ``</answer>`` is always a token boundary);
* a randomly initialised Qwen2 causal LM built from a config (a few hundred thousand weights);
* optionally a tiny Qwen2.5-VL (vision tower included) with an image-only processor (the stock
  Qwen processors also want a video processor, which needs torchvision).

The chat template is passed in by the caller (``mmsearch_gym.integrations.trl`` passes TRL's own
bundled Qwen templates, so TRL recognises them for tool calling and SFT masking); this module
never imports trl.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from mmsearch_gym.actions import DIALECTS, UNABLE_TO_ANSWER, Answer, ImageSearch, Invalid, Region, TextSearch
from mmsearch_gym.errors import ConfigError

__all__ = [
    "CHAT_SPECIAL_TOKENS", "SIZES", "TAG_TOKENS", "VISION_SPECIAL_TOKENS", "ImageOnlyQwen2_5_VLProcessor",
    "build_image_processor", "build_processor", "build_text_lm", "build_tokenizer", "build_vlm",
    "dialect_corpus", "load_tiny_model", "pretrain_copying", "save_tiny_model",
]

CHAT_SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
"""Qwen's chat markers: pad, turn start, turn end (the end-of-turn token is the EOS)."""

VISION_SPECIAL_TOKENS: tuple[str, ...] = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                                          "<|video_pad|>")

TAG_TOKENS: tuple[str, ...] = (
    "<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
    "<search>", "</search>", "<img>", "<information>", "</information>", "<crop>", "</crop>",
    "<img_search>", "</img_search>", "<tool_call>", "</tool_call>", "<tool_response>",
    "</tool_response>", "<tools>", "</tools>",
)
"""Every tag of the three dialects (and of Qwen's tool calling), one token each: a tiny model
learns the grammar faster, and generation stopped at a closing tag ends on a token boundary."""

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2},
    "small": {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2},
    "base": {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 4},
}
"""Model sizes by name: ``tiny`` for tests (about 0.2 M weights), ``small``/``base`` for the
learning benchmark and the CPU recipes."""


def dialect_corpus() -> list[str]:
    """Text every tokenizer should compress well: the dialects' prompts, hints and actions."""
    texts: list[str] = []
    for dialect in DIALECTS.values():
        texts += [dialect.system_prompt(), dialect.action_hint(), dialect.user_prompt("What is this?")]
        for action in (TextSearch("capital of France"), ImageSearch(Region.whole()),
                       ImageSearch(Region.from_box(10, 20, 110, 90)), Answer("Paris"),
                       Answer(UNABLE_TO_ANSWER)):
            try:
                texts.append(dialect.format(action, "I should look this up."))
            except ConfigError:
                continue
        texts.append(dialect.format_feedback(_invalid_example()))
    texts.append("(The image is 320x240 pixels.)")
    return texts


def _invalid_example() -> Invalid:
    return Invalid("no action found")


def build_tokenizer(texts: Iterable[str], *, chat_template: str, vocab_size: int = 1024,
                    vision: bool = False, repeat: int = 3,
                    extra_tokens: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` (plus :func:`dialect_corpus`).

    ``chat_template`` is set verbatim (trainers match templates by exact text). ``vision`` adds
    Qwen-VL's image tokens. ``extra_tokens`` are whole words kept as one token each (e.g. the
    world's entity names, so that a tiny model copies a name from the results as one symbol).
    Merges are learned on GPT-2's splits. Saved with a Qwen2 model, the tokenizer is loaded back
    by ``AutoTokenizer`` as a ``Qwen2Tokenizer``, which splits with Qwen2's pattern whatever
    tokenizer.json says (digits one by one); training and evaluation both use the loaded one.
    Deterministic: the same texts give the same vocabulary.
    """
    if not isinstance(chat_template, str) or "{%" not in chat_template:
        raise ConfigError("chat_template must be a Jinja chat template string")
    corpus = [t for t in list(texts) + dialect_corpus() if isinstance(t, str) and t]
    specials = list(CHAT_SPECIAL_TOKENS) + (list(VISION_SPECIAL_TOKENS) if vision else [])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(corpus * max(1, repeat), trainer=trainer)
    backend.add_tokens([AddedToken(tag, normalized=False, special=False) for tag in TAG_TOKENS])
    words = sorted({w for w in extra_tokens if isinstance(w, str) and w.strip()} - set(TAG_TOKENS))
    backend.add_tokens([AddedToken(w, normalized=False, special=False, single_word=True) for w in words])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, padding_side="left", model_max_length=8192,
        additional_special_tokens=specials[1:2] + specials[3:],
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def _text_config(tokenizer: PreTrainedTokenizerFast, size: str, max_positions: int) -> Qwen2Config:
    if size not in SIZES:
        raise ConfigError(f"unknown tiny model size {size!r}; choose one of {sorted(SIZES)}")
    return Qwen2Config(
        vocab_size=len(tokenizer), max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0, **SIZES[size],
    )


def build_text_lm(tokenizer: PreTrainedTokenizerFast, *, size: str = "tiny", seed: int = 0,
                  max_positions: int = 4096) -> PreTrainedModel:
    """A randomly initialised Qwen2 causal LM sized for ``tokenizer`` (seeded, float32)."""
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_text_config(tokenizer, size, max_positions))
    _set_generation_defaults(model, tokenizer)
    return model


def build_vlm(tokenizer: PreTrainedTokenizerFast, *, size: str = "tiny", seed: int = 0,
              max_positions: int = 4096) -> PreTrainedModel:
    """A randomly initialised tiny Qwen2.5-VL (vision tower of 1 block, 14-px patches)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    for token in VISION_SPECIAL_TOKENS:
        if tokenizer.convert_tokens_to_ids(token) is None:
            raise ConfigError("build the tokenizer with vision=True for a VLM")
    text = _text_config(tokenizer, size, max_positions).to_dict()
    heads = text["num_attention_heads"]
    head_dim = text["hidden_size"] // heads
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "mrope_section": _mrope_section(head_dim)}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "out_hidden_size": text["hidden_size"], "window_size": 56,
                       "fullatt_block_indexes": [0], "in_channels": 3},
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _set_generation_defaults(model, tokenizer)
    return model


def _mrope_section(head_dim: int) -> list[int]:
    """Split half the rotary dimensions over (time, height, width) like Qwen-VL (16/24/24 of 64)."""
    half = head_dim // 2
    hw = (half * 3) // 8
    return [half - 2 * hw, hw, hw]


def _set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> None:
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    model.generation_config.do_sample = True
    model.generation_config.temperature = 1.0
    model.generation_config.top_p = 1.0
    model.generation_config.top_k = 0


def build_image_processor(*, image_side: int = 56) -> Qwen2VLImageProcessorPil:
    """Qwen2-VL's PIL image processor at a tiny resolution (about image_side² pixels: a handful of
    image tokens per picture, so CPU sequences stay short)."""
    pixels = image_side * image_side
    return Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels},
                                    patch_size=14, temporal_patch_size=2, merge_size=2)


class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor for images only: the stock one insists on a video processor,
    which needs torchvision."""

    def __init__(self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None,
                 **kwargs: Any) -> None:
        self.image_token = "<|image_pad|>"
        self.video_token = "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def build_processor(tokenizer: PreTrainedTokenizerFast, *, chat_template: str,
                    image_side: int = 56) -> ImageOnlyQwen2_5_VLProcessor:
    """An image-only Qwen2.5-VL processor around ``tokenizer``."""
    return ImageOnlyQwen2_5_VLProcessor(image_processor=build_image_processor(image_side=image_side),
                                        tokenizer=tokenizer, chat_template=chat_template)


def save_tiny_model(out_dir: str | Path, *, chat_template: str, texts: Sequence[str] = (),
                    kind: str = "text", size: str = "tiny", vocab_size: int = 1024, seed: int = 0,
                    image_side: int = 56, extra_tokens: Sequence[str] = ()) -> Path:
    """Build a tokenizer (and processor) plus a random model, save them to ``out_dir``.

    ``kind`` is ``"text"`` (Qwen2 causal LM) or ``"vlm"`` (tiny Qwen2.5-VL). Returns ``out_dir``,
    loadable with :func:`load_tiny_model` (or ``from_pretrained`` for the text LM).
    """
    if kind not in ("text", "vlm"):
        raise ConfigError(f"kind must be 'text' or 'vlm', got {kind!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, chat_template=chat_template, vocab_size=vocab_size,
                                vision=kind == "vlm", extra_tokens=extra_tokens)
    if kind == "text":
        model = build_text_lm(tokenizer, size=size, seed=seed)
        tokenizer.save_pretrained(out)
    else:
        model = build_vlm(tokenizer, size=size, seed=seed)
        processor = build_processor(tokenizer, chat_template=chat_template, image_side=image_side)
        processor.save_pretrained(out)
    model.save_pretrained(out)
    (out / "mmsearch_tiny.json").write_text(json.dumps(
        {"kind": kind, "size": size, "vocab_size": len(tokenizer), "seed": seed,
         "image_side": image_side}, indent=2), encoding="utf-8")
    return out


def load_tiny_model(path: str | Path) -> tuple[PreTrainedModel, Any]:
    """Load ``(model, processing_class)`` saved by :func:`save_tiny_model` (or any Qwen2 / Qwen2.5-VL dir)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta_path = path / "mmsearch_tiny.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {"kind": "text"}
    if meta.get("kind") == "vlm":
        from transformers import Qwen2_5_VLForConditionalGeneration

        processor = ImageOnlyQwen2_5_VLProcessor.from_pretrained(path)
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(path), processor
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def pretrain_copying(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, *, steps: int = 300,
                     batch_size: int = 64, span: int = 24, gap: int = 0, learning_rate: float = 3e-3, seed: int = 0,
                     progress: bool = False) -> list[dict[str, float]]:
    """Teach a random tiny LM to copy, on random token strings shown twice (no task data).

    A pretrained LM can repeat a word it has just read, whatever the word; a random one cannot,
    and the SFT cold start alone teaches it to name only the entities it was trained on. This
    stage stands in for LM pretraining: each example is ``span`` tokens drawn uniformly from the
    whole non-special vocabulary, shown twice, with the loss on the repeat. It knows nothing of
    the world: no text, no names, no tags.

    ``gap`` = 0 puts the repeat right after the first copy, always ``span`` tokens back, which a
    head attending to a fixed offset solves (fast, but it does not carry over to a name read
    further back). ``gap`` > 0 puts 0 to ``gap`` random tokens between the copies and moves the
    pair within ``2 * span + gap`` tokens, so only content-based copying (induction heads: find
    the earlier occurrence of the current token, emit the one after it) lowers the loss; it
    takes longer to appear (about 750 steps for the tiny model at ``span`` 32, ``gap`` 96).

    Returns the loss curve (``step``, ``loss``, ``copy_accuracy`` on the repeat), every 25 steps.
    """
    if steps < 1 or batch_size < 1 or span < 2 or gap < 0:
        raise ConfigError(f"need steps >= 1, batch_size >= 1, span >= 2 and gap >= 0, "
                          f"got {steps}, {batch_size}, {span}, {gap}")
    from tqdm import tqdm

    markup = set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids(
        [t for t in TAG_TOKENS + VISION_SPECIAL_TOKENS if t in tokenizer.get_vocab()]))
    pool = torch.tensor([i for i in range(len(tokenizer)) if i not in markup])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    device = next(model.parameters()).device
    curve: list[dict[str, float]] = []
    was_training = model.training
    model.train()
    for step in tqdm(range(steps), desc="copy pretraining", unit="step", disable=not progress):
        ids, labels = _copy_batch(pool, batch_size, span, gap, generator)
        out = model(input_ids=ids.to(device), labels=labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            with torch.no_grad():
                scored = labels[:, 1:] != -100
                hits = (out.logits[:, :-1].argmax(-1).cpu() == labels[:, 1:]) & scored
            curve.append({"step": step, "loss": float(out.loss.detach()),
                          "copy_accuracy": float(hits.sum() / scored.sum())})
    model.train(was_training)
    return curve


def _copy_batch(pool: torch.Tensor, batch_size: int, span: int, gap: int,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``2 * span + gap`` random tokens in which one ``span``-long string recurs, 0 to
    ``gap`` tokens after its end; labels on the repeat but its first token (unpredictable)."""
    ids = pool[torch.randint(len(pool), (batch_size, 2 * span + gap), generator=generator)]
    labels = torch.full_like(ids, -100)
    for row in range(batch_size):
        between = int(torch.randint(gap + 1, (1,), generator=generator))
        first = int(torch.randint(gap - between + 1, (1,), generator=generator))
        second = first + span + between
        ids[row, second:second + span] = ids[row, first:first + span]
        labels[row, second + 1:second + span] = ids[row, second + 1:second + span]
    return ids, labels
