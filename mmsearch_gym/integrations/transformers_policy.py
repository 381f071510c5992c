"""TransformersPolicy: any Hugging Face causal LM or vision-language model as a search policy.

The policy renders each episode's chat (``EpisodeView.messages``) with the model's chat
template, decodes many episodes in one left-padded batch, stops each sequence at the first
closing tag of its dialect (``</search>``, ``</text_search>``, ``</answer>`` ...) exactly as the
papers' rollouts do, and cuts anything after that tag.

* A **VLM** (its ``AutoProcessor`` has an image processor) gets the real images: the task image
  and every result thumbnail, one chat-template placeholder per image (the count is checked,
  since a mismatch is the classic multi-image failure).
* A **text-only LM** sees a short text placeholder (``[image]``) where the images were.

torch and transformers are imported only when a policy is built, so ``import
mmsearch_gym.policies`` (and this module) stays light.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from mmsearch_gym.errors import ConfigError
from mmsearch_gym.integrations.hf import load_pretrained, resolve_dtype
from mmsearch_gym.policies import interleave_images, text_only_content
from mmsearch_gym.stopping import cut_at_stop, first_stop_end

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin, StoppingCriteria

    from mmsearch_gym.policies import EpisodeView

__all__ = ["TransformersPolicy", "cut_at_stop", "make_stop_criteria"]

MAX_IMAGE_PIXELS = 672 * 672
"""MMSearch-R1 feeds images of at most 672x672 pixels; larger ones are scaled down."""


def make_stop_criteria(tokenizer: PreTrainedTokenizerBase, stops: Sequence[Sequence[str]],
                       prompt_length: int) -> StoppingCriteria:
    """A ``transformers.StoppingCriteria`` that ends each sequence at its own closing tags.

    ``stops[i]`` are the stop strings of batch row ``i``. Each call decodes only the newest
    generated tokens of every row (enough to hold the longest stop string) and reports, per
    row, whether a stop string has appeared: rows finish independently, as the papers'
    rollouts stop each trajectory at its first closing tag.
    """
    import torch
    from transformers import StoppingCriteria

    longest = max((len(s) for row in stops for s in row), default=1)
    window = longest + 4  # every token decodes to at least one character of an ASCII tag

    class _StopOnClosingTag(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
            generated = input_ids[:, prompt_length:]
            tail = generated[:, -window:].tolist()
            texts = tokenizer.batch_decode(tail, skip_special_tokens=False)
            done = [first_stop_end(text, row) is not None for text, row in zip(texts, stops, strict=False)]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    return _StopOnClosingTag()


class TransformersPolicy:
    """A local Hugging Face model that acts in the episode's dialect.

    Args:
        model: a causal LM (``AutoModelForCausalLM``) or an image-text-to-text model.
        processor: its tokenizer (text-only) or processor (VLM: has ``image_processor`` and
            ``tokenizer``). It must have a chat template.
        max_new_tokens: generation budget of one turn.
        temperature: 0 means greedy decoding (the default, deterministic); above 0 samples.
        top_p: nucleus sampling mass when sampling.
        seed: seeds sampling (each ``act`` call derives its own seed; the global torch RNG is
            left untouched).
        batch_size: how many episodes one ``generate`` call decodes.
        image_placeholder: what a text-only LM sees instead of an image.
        max_image_pixels: images larger than this are scaled down (keeping their aspect).
        chat_template_kwargs: extra arguments for ``apply_chat_template`` (e.g.
            ``{"enable_thinking": False}`` for Qwen3).
        name: the policy's name in reports.

    Dialect tags must be plain text or *added* tokens, not *special* tokens: special tokens
    are dropped when the completion is decoded.
    """

    def __init__(self, model: PreTrainedModel, processor: PreTrainedTokenizerBase | ProcessorMixin, *,
                 max_new_tokens: int = 256, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, batch_size: int = 8, image_placeholder: str = "[image]",
                 max_image_pixels: int | None = MAX_IMAGE_PIXELS,
                 chat_template_kwargs: dict[str, Any] | None = None, name: str | None = None) -> None:
        if max_new_tokens < 1 or batch_size < 1:
            raise ConfigError("max_new_tokens and batch_size must be >= 1")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ConfigError("temperature must be >= 0 and top_p in (0, 1]")
        if max_image_pixels is not None and max_image_pixels < 1:
            raise ConfigError("max_image_pixels must be >= 1 (or None for no limit)")
        self.model = model
        self.processor = processor
        self.is_vlm = getattr(processor, "image_processor", None) is not None
        self.tokenizer = getattr(processor, "tokenizer", processor) if self.is_vlm else processor
        if getattr(processor, "chat_template", None) is None and getattr(self.tokenizer, "chat_template", None) is None:
            raise ConfigError("the tokenizer/processor has no chat template; set its chat_template "
                              "(e.g. TRL bundles Qwen templates under trl/chat_templates/)")
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.image_placeholder = image_placeholder
        self.max_image_pixels = max_image_pixels
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        model_name = getattr(getattr(model, "config", None), "name_or_path", "") or type(model).__name__
        self.name = name or f"transformers:{model_name}"
        self._calls = 0
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only batching: prompts end at the same column
        token = getattr(processor, "image_token", None) if self.is_vlm else None
        self.image_token: str | None = token if isinstance(token, str) or token is None \
            else str(getattr(token, "content", token))
        model.eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | torch.dtype | None = None,
                        trust_remote_code: bool = False, **kwargs: Any) -> TransformersPolicy:
        """Load a model directory (or a hub id, when the hub is reachable) and its processor.

        ``dtype`` is a torch dtype, its name ("float32", "bfloat16") or "auto"; default float32
        on CPU, the checkpoint's dtype elsewhere. Other kwargs go to the constructor.
        """
        import torch

        where = str(path)
        if Path(where).expanduser().exists():
            where = str(Path(where).expanduser())
        elif where.startswith((".", "/", "~")):
            raise ConfigError(f"model directory {where} does not exist")
        dtype = resolve_dtype(dtype)
        if dtype is None:
            dtype = torch.float32 if str(device).startswith("cpu") else "auto"
        model, processor = load_pretrained(where, dtype=dtype, trust_remote_code=trust_remote_code)
        model.to(device)  # type: ignore[arg-type]
        kwargs.setdefault("name", f"transformers:{path}")
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------------ prompts ---------
    def chat(self, episode: EpisodeView) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        """The episode's chat in the shape the chat template wants, and its images in order.

        VLM: content lists with one ``{"type": "image"}`` per image. Text LM: plain strings, the
        images replaced by the placeholder text (and no images returned).
        """
        messages: list[dict[str, Any]] = []
        images: list[Image.Image] = []
        for message in episode.messages:
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not self.is_vlm:
                messages.append({"role": message["role"],
                                 "content": text_only_content(content or [], self.image_placeholder)})
                continue
            blocks = []
            for block in interleave_images(content or []):
                if block.get("type") == "image" and block.get("image") is not None:
                    images.append(self._fit(block["image"]))
                    blocks.append({"type": "image"})
                elif block.get("type") == "text":
                    text = str(block["text"])
                    if self.image_token:  # a literal placeholder in text would eat an image slot
                        text = text.replace(self.image_token, self.image_placeholder)
                    blocks.append({"type": "text", "text": text})
            messages.append({"role": message["role"], "content": blocks})
        return messages, images

    def prompt(self, episode: EpisodeView) -> tuple[str, list[Image.Image]]:
        """The rendered prompt text (ending with the assistant header) and its images."""
        messages, images = self.chat(episode)
        template_owner = self.processor if self.is_vlm else self.tokenizer
        text = template_owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.chat_template_kwargs)
        if self.is_vlm and self.image_token:
            found = text.count(self.image_token)
            if found != len(images):
                raise ConfigError(f"the chat template wrote {found} image placeholders ({self.image_token!r}) "
                                  f"for {len(images)} images; use a template that emits one per image block")
        return text, images

    def encode(self, episodes: Sequence[EpisodeView]) -> Any:
        """The left-padded model inputs of a batch of episodes (pixel values included for a VLM)."""
        prompts, images = zip(*(self.prompt(e) for e in episodes), strict=False)
        if self.is_vlm:
            if any(images):
                batch = self.processor(text=list(prompts), images=[list(i) for i in images],
                                       padding=True, return_tensors="pt")
            else:
                batch = self.processor(text=list(prompts), padding=True, return_tensors="pt")
        else:
            batch = self.tokenizer(list(prompts), padding=True, return_tensors="pt", add_special_tokens=False)
        return batch.to(self.model.device)

    def _fit(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        if self.max_image_pixels is None or image.width * image.height <= self.max_image_pixels:
            return image
        scale = (self.max_image_pixels / (image.width * image.height)) ** 0.5
        size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
        return image.resize(size, Image.Resampling.BICUBIC)

    # ------------------------------------------------------------------ acting ----------
    def act(self, episodes: Sequence[EpisodeView]) -> list[str]:
        """One completion per episode, cut after its first closing tag; batched generation."""
        out: list[str] = []
        for start in range(0, len(episodes), self.batch_size):
            out.extend(self._generate(episodes[start:start + self.batch_size]))
        return out

    def _generate(self, episodes: Sequence[EpisodeView]) -> list[str]:
        import torch
        from transformers import StoppingCriteriaList

        self._calls += 1
        batch = self.encode(episodes)
        prompt_length = int(batch["input_ids"].shape[1])
        stops = [tuple(e.dialect.stop_sequences) for e in episodes]
        criteria = StoppingCriteriaList([make_stop_criteria(self.tokenizer, stops, prompt_length)])
        terminal = self._terminal_ids()
        options: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "stopping_criteria": criteria,
                                   "pad_token_id": self.tokenizer.pad_token_id}
        if self.temperature > 0:
            options.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with self._rng(), torch.inference_mode():
            sequences = self.model.generate(**batch, **options)
        texts = []
        for row, stop in zip(sequences[:, prompt_length:].tolist(), stops, strict=False):
            ids = []
            for token in row:
                if token in terminal:
                    break
                ids.append(token)
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            texts.append(cut_at_stop(text, stop))
        return texts

    def _terminal_ids(self) -> set[int]:
        ids: set[int] = set()
        config = getattr(self.model, "generation_config", None)
        for value in (getattr(config, "eos_token_id", None), self.tokenizer.eos_token_id,
                      self.tokenizer.pad_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids

    def _rng(self) -> contextlib.AbstractContextManager[Any]:
        """Sampling draws from a forked torch RNG seeded per call: reproducible, and the
        caller's global RNG state is left as it was."""
        if self.temperature <= 0:
            return contextlib.nullcontext()
        import torch

        device = getattr(self.model, "device", None)
        cuda = [device.index or 0] if device is not None and device.type == "cuda" else []

        @contextlib.contextmanager
        def forked() -> Any:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed * 1_000_003 + self._calls)
                yield

        return forked()

    def __repr__(self) -> str:
        kind = "VLM" if self.is_vlm else "LM"
        return f"TransformersPolicy({self.name!r}, {kind}, max_new_tokens={self.max_new_tokens})"
