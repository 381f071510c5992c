"""LLMJudge: a binary verdict from (question, gold answers, prediction), as DeepMMSearch-R1 scores.

The judge is a :data:`mmsearch_gym.reward.Judge` (``judge(prediction, answers, question) ->
0.0 or 1.0``), so ``RewardSpec.deepmmsearch_r1(judge=LLMJudge(...))`` uses it. Each verdict is
recorded through a :class:`~mmsearch_gym.services.recorded.RecordedService` keyed by the
question, the gold answers, the prediction, the model and :data:`PROMPT_VERSION`, so a judged
run replays and re-scores offline with identical verdicts.

The prompt (:data:`SYSTEM_PROMPT`, :data:`USER_TEMPLATE`) accepts synonyms, aliases, ranges
containing the answer, rounding and unit conversions, and rejects hedges and lists of
candidates. The verdict parser reads the first ``CORRECT``/``INCORRECT`` (or yes/no, true/false,
1/0) word of the reply; an unparseable reply is asked again (``max_tries``) and then a
ServiceError, never a guessed score.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmsearch_gym.services.client import ChatClient, ServiceError, ServiceSpec, parse_service_spec
from mmsearch_gym.services.recorded import RecordedService

__all__ = ["PROMPT_VERSION", "SYSTEM_PROMPT", "USER_TEMPLATE", "LLMJudge", "parse_verdict"]

PROMPT_VERSION = "judge-v1"
SYSTEM_PROMPT = (
    "You grade answers to questions about images. Decide whether the PREDICTION gives the same "
    "answer as one of the GOLD ANSWERS. Accept synonyms, aliases, translations, a range or "
    "approximation that contains the gold value, rounding, and unit conversions. Reject answers "
    "that hedge between several candidates, list many options, or add a wrong claim. "
    "Reply with exactly one word: CORRECT or INCORRECT.")
USER_TEMPLATE = "QUESTION: {question}\nGOLD ANSWERS: {answers}\nPREDICTION: {prediction}\nVERDICT:"
RETRY_PROMPT = "Reply with exactly one word: CORRECT or INCORRECT."

_POSITIVE = {"correct", "yes", "true", "1", "right", "accept", "accepted"}
_NEGATIVE = {"incorrect", "no", "false", "0", "wrong", "reject", "rejected", "not_correct"}
_WORD = re.compile(r"[a-z0-9_]+")


def parse_verdict(text: str) -> bool | None:
    """True/False from a judge's reply, or None when it states no verdict.

    Reads the reply after any ``<think>...</think>`` block; "not correct" counts as incorrect;
    the first verdict word wins ("CORRECT. It is not incorrect" is correct).
    """
    if not isinstance(text, str):
        return None
    text = re.sub(r"(?is)<think>.*?</think>", " ", text).lower().replace("not correct", "not_correct")
    for word in _WORD.findall(text):
        if word in _NEGATIVE:
            return False
        if word in _POSITIVE:
            return True
    return None


class LLMJudge:
    """A binary LLM judge over an OpenAI-compatible endpoint, with recorded verdicts.

    Args:
        spec: ``openai:URL#MODEL`` or a mapping (see :func:`parse_service_spec`).
        cache_dir, cache_mode: where and how verdicts are recorded (the env's cache block).
        max_tries: requests per verdict when the reply states none.
    """

    def __init__(self, spec: ServiceSpec | str | Mapping[str, Any], *, cache_dir: str | Path | None = None,
                 cache_mode: str = "readthrough", max_tries: int = 3) -> None:
        self.spec = parse_service_spec(spec, what="judge")
        self.client = ChatClient(self.spec, service="judge")
        self.max_tokens = int(self.spec.options.get("max_tokens", 16))
        self.temperature = float(self.spec.options.get("temperature", 0.0))
        self.max_tries = max(1, int(max_tries))
        self.recorder = RecordedService("judge", PROMPT_VERSION,
                                        {"model": self.spec.model, "temperature": self.temperature,
                                         "max_tokens": self.max_tokens},
                                        directory=cache_dir, mode=cache_mode)
        self.__name__ = f"judge:{self.spec.model}"

    def messages(self, prediction: str, answers: Sequence[str], question: str) -> list[dict[str, str]]:
        """The chat sent for one verdict (documented in the README)."""
        user = USER_TEMPLATE.format(question=question.strip(), answers=" | ".join(a.strip() for a in answers),
                                    prediction=prediction.strip())
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]

    def _ask(self, prediction: str, answers: Sequence[str], question: str) -> str:
        messages = self.messages(prediction, answers, question)
        reply = ""
        for _ in range(self.max_tries):
            reply = self.client.complete(messages, max_tokens=self.max_tokens, temperature=self.temperature)
            verdict = parse_verdict(reply)
            if verdict is not None:
                return "CORRECT" if verdict else "INCORRECT"
            messages = [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": RETRY_PROMPT}]
        raise ServiceError(f"judge {self.spec.describe()} stated no verdict in {self.max_tries} tries "
                           f"(last reply {reply[:120]!r}); use a model that follows the instruction")

    def __call__(self, prediction: str, answers: Sequence[str], question: str = "") -> float:
        request = {"question": question, "answers": list(answers), "prediction": prediction}
        verdict = self.recorder.answer(request, lambda: self._ask(prediction, answers, question))
        return 1.0 if parse_verdict(verdict) else 0.0

    def __repr__(self) -> str:
        return f"LLMJudge({self.spec.describe()!r}, {PROMPT_VERSION})"
