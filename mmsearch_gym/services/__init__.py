"""Services: LLMs behind OpenAI-compatible endpoints that the env uses, recorded like searches.

``LLMJudge`` (binary verdicts for the reward), ``LLMSummarizer`` / ``SummarizingBackend``
(search results condensed before the model sees them) and ``VLMGrounder`` (referring
expression -> box), all over one :class:`ChatClient`, all recorded through a SearchCache
(:class:`RecordedService`) so that a judged, summarised, grounded run replays offline.
Named in specs and on the command line as ``openai:BASE_URL#MODEL`` (see ``search/registry.py``).
"""

from __future__ import annotations

from mmsearch_gym.services.client import ChatClient, ServiceError, ServiceSpec, parse_service_spec
from mmsearch_gym.services.grounder import VLMGrounder, parse_box
from mmsearch_gym.services.judge import LLMJudge, parse_verdict
from mmsearch_gym.services.recorded import RecordedService
from mmsearch_gym.services.summarizer import LLMSummarizer, SummarizingBackend

__all__ = ["ChatClient", "LLMJudge", "LLMSummarizer", "RecordedService", "ServiceError", "ServiceSpec",
           "SummarizingBackend", "VLMGrounder", "parse_box", "parse_service_spec", "parse_verdict"]
