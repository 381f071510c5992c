"""UnicodeText: a Gymnasium Text space that holds real natural language.

``gymnasium.spaces.Text`` only contains strings over its character set (ASCII letters and digits
by default), so questions, search results and model output would fall outside it. This subclass
contains *any* ``str`` up to ``max_length`` characters; it samples from a wide, tag-heavy
character set so that ``check_env`` and fuzzing exercise the parser. Being a ``Text`` subclass,
Gymnasium's vector utilities (``batch_space``, ``iterate``, ``concatenate``) handle it as text.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

_SAMPLE_CHARSET = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " <>/,.-_:;'\"()[]{}!?\n"
    "éüßçñøåœЖжДдΩπ中文日本語한국어🙂"
)
_TAG_SNIPPETS = ("<reason>", "</reason>", "<answer>", "</answer>", "<text_search>", "</text_search>",
                 "<search><img></search>", "<crop>", "</crop>", "<img_search>", "</img_search>",
                 "<tool_call>", "</tool_call>")


class UnicodeText(spaces.Text):
    """Any Python ``str`` of ``min_length`` to ``max_length`` characters."""

    def __init__(self, max_length: int, *, min_length: int = 0,
                 seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length, min_length=min_length, charset=_SAMPLE_CHARSET, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and self.min_length <= len(x) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """Random text mixing characters and whole dialect tags (tag soup for fuzzing)."""
        if mask is not None or probability is not None:
            return super().sample(mask=mask, probability=probability)
        rng = self.np_random
        limit = min(self.max_length, 256)
        length = int(rng.integers(self.min_length, max(self.min_length, limit) + 1))
        pieces: list[str] = []
        size = 0
        chars = self.character_list
        while size < length:
            if rng.random() < 0.15:
                piece = _TAG_SNIPPETS[int(rng.integers(len(_TAG_SNIPPETS)))]
            else:
                piece = chars[int(rng.integers(len(chars)))]
            piece = piece[: length - size]
            pieces.append(piece)
            size += len(piece)
        return "".join(pieces)

    def __repr__(self) -> str:
        return f"UnicodeText({self.min_length}, {self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, UnicodeText) and self.min_length == other.min_length
                and self.max_length == other.max_length)
