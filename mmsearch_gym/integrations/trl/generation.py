"""Token-level helpers of the rollout route: prompt encoding, batched ``generate`` with stop
strings, the tokens of a tool-result turn, and cutting a turn at its first stop string."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch
from PIL import Image
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from mmsearch_gym.errors import DataError
from mmsearch_gym.stopping import cut_at_stop, first_stop_token


class EpisodeTokens(Protocol):
    """What generation reads of a rollout episode (``rollout._Episode``): its tokens so far and
    its image features (a Protocol, so this module imports nothing of the rollout)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    vision: dict[str, torch.Tensor]

Processing = PreTrainedTokenizerBase | ProcessorMixin
"""A text model's tokenizer or a VLM's processor (TRL's ``processing_class``)."""
Prompt = Sequence[Mapping[str, Any]]
"""One chat prompt (system + user messages) as a GRPO dataset row holds it."""
TurnOutput = tuple[list[int], list[float] | None]
"""One generated turn: new token ids and their log-probabilities (None without vLLM)."""
Generate = Callable[[list[Any], int], list[TurnOutput]]
"""A batch of episodes (:class:`EpisodeTokens`) and a token budget -> one new turn per episode."""


def _tokenizer_of(processing: Processing) -> PreTrainedTokenizerBase:
    return processing.tokenizer if isinstance(processing, ProcessorMixin) else processing


def _task_id_of(prompt: Prompt) -> str:
    for message in prompt:
        task_id = message.get("task_id")
        if task_id:
            return str(task_id)
    raise DataError("a GRPO prompt carries no task_id: build the dataset with "
                    "mmsearch_gym.integrations.trl.to_dataset (its user message holds the task id)")


def _clean_messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _encode_prompt(processing: Processing, prompt: Prompt
                   ) -> tuple[list[int], list[Image.Image] | None, dict[str, torch.Tensor]]:
    """Token ids of the chat prompt (with generation prompt), its images and vision tensors."""
    messages = _clean_messages(prompt)
    if isinstance(processing, ProcessorMixin):
        images = [block["image"] for m in messages if isinstance(m["content"], list)
                  for block in m["content"] if block.get("type") == "image" and block.get("image") is not None]
        out = processing.apply_chat_template([messages], add_generation_prompt=True, tokenize=True,
                                             return_dict=True, return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        vision = {k: v for k, v in out.items() if k in ("pixel_values", "image_grid_thw")}
        return ids, images or None, vision
    ids = processing.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                         return_dict=False)
    if isinstance(ids, Mapping):
        ids = ids["input_ids"]
    return list(ids), None, {}


def _batch_vision(batch: Sequence[EpisodeTokens], device: torch.device) -> dict[str, torch.Tensor]:
    if not any(ep.vision for ep in batch):
        return {}
    return {
        "pixel_values": torch.cat([ep.vision["pixel_values"] for ep in batch]).to(device),
        "image_grid_thw": torch.cat([ep.vision["image_grid_thw"] for ep in batch]).to(device),
    }


def hf_generate(model: PreTrainedModel, processing: Processing, batch: Sequence[EpisodeTokens], max_new: int, *,
                stops: Sequence[str], generation_config: GenerationConfig | None = None,
                eos_token_ids: Sequence[int] | None = None,
                **generate_kwargs: Any) -> list[tuple[list[int], None]]:
    """One turn for a batch of episodes with ``model.generate`` (left-padded, stop strings)."""
    tokenizer = _tokenizer_of(processing)
    seqs = [ep.prompt_ids + ep.completion_ids for ep in batch]
    width = max(len(s) for s in seqs)
    device = next(model.parameters()).device
    input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        input_ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
        attention[row, width - len(seq):] = 1
    inputs: dict[str, Any] = {"input_ids": input_ids.to(device), "attention_mask": attention.to(device)}
    inputs.update(_batch_vision(batch, device))
    config = copy.deepcopy(generation_config if generation_config is not None else model.generation_config)
    config.max_new_tokens = max_new
    config.stop_strings = list(stops)
    for key, value in generate_kwargs.items():
        setattr(config, key, value)
    kwargs: dict[str, Any] = {"generation_config": config, "tokenizer": tokenizer}
    out = model.generate(**inputs, **kwargs)
    eos = set(eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id])
    results: list[tuple[list[int], None]] = []
    for ids in out[:, width:].cpu().tolist():
        cut = next((i + 1 for i, tok in enumerate(ids) if tok in eos), len(ids))
        results.append((ids[:cut], None))
    return results


_SENTINEL = "\x00MMSEARCH_TURN\x00"
_RESULT = "\x00MMSEARCH_RESULT \n\x00"
_PROBE = " \n\x00MMSEARCH_PROBE\x00\n "
_GLUE_CACHE: dict[tuple[bool, str], tuple[str, str] | None] = {}


def _render_glue(processing: Processing, result: str) -> str:
    """The chat template's text between an assistant turn and the next one, around ``result``."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "s"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": _SENTINEL}, {"role": "user", "content": result},
    ]
    if isinstance(processing, ProcessorMixin):
        messages = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in messages]
    text = processing.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if isinstance(text, list):
        text = text[0]
    return text[text.index(_SENTINEL) + len(_SENTINEL):]


def _glue_frame(processing: Processing) -> tuple[str, str] | None:
    """The glue's text before and after the tool result, rendered once per chat template.

    None when the template does not insert the result verbatim (it trims or escapes it): then
    every glue is rendered in full.
    """
    template = getattr(processing, "chat_template", None)
    if template is None:
        return None
    key = (isinstance(processing, ProcessorMixin), str(template))
    if key not in _GLUE_CACHE:
        frame = None
        glue = _render_glue(processing, _RESULT)
        if glue.count(_RESULT) == 1:
            before, after = glue.split(_RESULT)
            if _render_glue(processing, _PROBE) == before + _PROBE + after:
                frame = (before, after)
        _GLUE_CACHE[key] = frame
    return _GLUE_CACHE[key]


def _tool_turn_ids(processing: Processing, result: str, *, ends_with_eos: bool) -> list[int]:
    """Tokens between one assistant turn and the next: end of turn, the tool-result user turn,
    and the next assistant header, exactly as the chat template renders them."""
    tokenizer = _tokenizer_of(processing)
    frame = _glue_frame(processing)
    glue = frame[0] + result + frame[1] if frame is not None else _render_glue(processing, result)
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's Rust core: same ids
    ids = backend.encode(glue, add_special_tokens=False).ids if backend is not None \
        else tokenizer(glue, add_special_tokens=False)["input_ids"]
    if ends_with_eos and ids and ids[0] == tokenizer.eos_token_id:
        ids = ids[1:]
    return ids


def _decoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[Sequence[int]], str]:
    """``tokenizer.decode(ids, skip_special_tokens=True)``, straight through a fast tokenizer's
    Rust core when that gives the same text (no clean-up pass): the Python wrapper's per-id
    checks cost more than the decoding itself on long turns."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return lambda ids: backend.decode(list(ids), skip_special_tokens=True)
    return lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True)


def _cut_turn(tokenizer: PreTrainedTokenizerBase, ids: list[int], logps: list[float] | None,
              stops: Sequence[str], limit: int) -> tuple[list[int], list[float] | None, str]:
    """A generated turn cut after the token that completes its first stop string, and its text.

    Linear in the turn length (:func:`mmsearch_gym.stopping.first_stop_token`), not one decode
    of the growing prefix per token; the text is the env's action (cut at the stop string).
    """
    ids = ids[:max(0, limit)]
    if logps is not None:
        logps = logps[:len(ids)]
    decode = _decoder(tokenizer)
    found = first_stop_token(ids, decode, stops)
    if found is None:
        return ids, logps, decode(ids)
    k, text = found
    return ids[:k], (logps[:k] if logps is not None else None), cut_at_stop(text, stops)


def _cut_at_stop(tokenizer: PreTrainedTokenizerBase, ids: list[int], logps: list[float] | None,
                 stops: Sequence[str], limit: int) -> tuple[list[int], list[float] | None]:
    """Keep tokens up to (and including) the one that completes the first stop string."""
    ids, logps, _ = _cut_turn(tokenizer, ids, logps, stops, limit)
    return ids, logps


def _action_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], stops: Sequence[str]) -> str:
    """The text the env is stepped with: the decoded turn, ending at its first closing tag."""
    return cut_at_stop(_decoder(tokenizer)(ids), stops)
