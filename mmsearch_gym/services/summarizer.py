"""LLMSummarizer and SummarizingBackend: search results condensed by an LLM before the model sees them.

MMSearch-R1's text tool is search -> read the top pages -> summarise each page for the
question; DeepMMSearch-R1 also summarises image-search results. :class:`LLMSummarizer` is a
:data:`~mmsearch_gym.search.reader.Summarizer` (``summarizer(query, text) -> summary``), so
``ReadingBackend(inner, reader, summarizer, summarizer_id=s.identity)`` uses it after a page
reader. :class:`SummarizingBackend` summarises hits without a reader (each hit's title and
snippet) and, with ``images=True``, image hits too. Every summary is recorded through a
:class:`~mmsearch_gym.services.recorded.RecordedService`; the backend's ``cache_params`` carry
the summariser's identity, so the env's search cache keys change with the model or prompt.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend
from mmsearch_gym.services.client import ChatClient, ServiceSpec, parse_service_spec
from mmsearch_gym.services.recorded import RecordedService

__all__ = ["PROMPT_VERSION", "LLMSummarizer", "SummarizingBackend"]

PROMPT_VERSION = "summary-v1"
SYSTEM_PROMPT = ("You condense web search results for a question-answering agent. Keep every fact "
                 "that helps answer the query (names, numbers, dates, places); drop navigation, ads "
                 "and boilerplate. Answer with the summary only, at most {words} words.")
USER_TEMPLATE = "QUERY: {query}\n\nCONTENT:\n{text}"


class LLMSummarizer:
    """``summarizer(query, text) -> summary`` over an OpenAI-compatible endpoint, recorded."""

    def __init__(self, spec: ServiceSpec | str | Mapping[str, Any], *, cache_dir: str | Path | None = None,
                 cache_mode: str = "readthrough") -> None:
        self.spec = parse_service_spec(spec, what="summarizer")
        self.client = ChatClient(self.spec, service="summarizer")
        self.max_tokens = int(self.spec.options.get("max_tokens", 256))
        self.words = int(self.spec.options.get("words", 120))
        self.max_input_chars = int(self.spec.options.get("max_input_chars", 12_000))
        self.recorder = RecordedService("summarizer", PROMPT_VERSION,
                                        {"model": self.spec.model, "max_tokens": self.max_tokens,
                                         "words": self.words, "max_input_chars": self.max_input_chars},
                                        directory=cache_dir, mode=cache_mode)

    @property
    def identity(self) -> str:
        """What keys the search cache of a backend using this summariser (model and prompt)."""
        return f"{self.spec.model}/{PROMPT_VERSION}/{self.words}w"

    def __call__(self, query: str, text: str) -> str:
        text = text[: self.max_input_chars]
        messages = [{"role": "system", "content": SYSTEM_PROMPT.format(words=self.words)},
                    {"role": "user", "content": USER_TEMPLATE.format(query=query.strip(), text=text)}]
        request = {"query": query, "text": text}
        summary = self.recorder.answer(
            request, lambda: self.client.complete(messages, max_tokens=self.max_tokens).strip())
        return summary or text

    def __repr__(self) -> str:
        return f"LLMSummarizer({self.spec.describe()!r}, {PROMPT_VERSION})"


class SummarizingBackend:
    """Wraps a backend: the snippets of its first ``top_n`` hits become LLM summaries.

    Text hits are summarised for the query (``title`` and ``snippet`` as the content); image
    hits, when ``images`` is on, for the question "what does this image show" (their titles
    and snippets describe the matching pages). Hits beyond ``top_n`` keep their snippets.
    """

    def __init__(self, inner: SearchBackend, summarizer: LLMSummarizer, *, images: bool = False,
                 text: bool = True, top_n: int = 5) -> None:
        self.inner = inner
        self.summarizer = summarizer
        self.images = bool(images)
        self.text = bool(text)
        self.top_n = int(top_n)
        self.name = f"{inner.name}+summary"
        self.version = f"{inner.version}+{PROMPT_VERSION}"

    def cache_params(self) -> dict[str, Any]:
        inner_params = getattr(self.inner, "cache_params", None)
        params: dict[str, Any] = dict(inner_params()) if callable(inner_params) else {}
        params.update({"summary.model": self.summarizer.identity, "summary.images": self.images,
                       "summary.text": self.text, "summary.top_n": self.top_n})
        return params

    def _condense(self, query: str, hits: list[Hit]) -> list[Hit]:
        out = list(hits)
        for i, hit in enumerate(hits[: self.top_n]):
            content = f"{hit.title}\n{hit.url}\n{hit.snippet}".strip()
            out[i] = dataclasses.replace(hit, snippet=self.summarizer(query, content))
        return out

    def text_search(self, query: str, k: int) -> list[Hit]:
        hits = list(self.inner.text_search(query, k))
        return self._condense(query, hits) if self.text else hits

    def image_search(self, image: ImageQuery, k: int) -> list[Hit]:
        hits = list(self.inner.image_search(image, k))
        return self._condense("what does this image show?", hits) if self.images else hits

    def __repr__(self) -> str:
        return f"SummarizingBackend({self.inner!r}, {self.summarizer!r}, images={self.images})"
