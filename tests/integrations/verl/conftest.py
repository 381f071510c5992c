"""Fixtures for the veRL adapter tests. They run only where veRL imports: veRL 0.9.1 pins
transformers<5.11, so `.ci/run` runs this folder in its own venv (.verl-venv) after the main
suite; in the main venv the modules that need veRL skip with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    from mmsearch_gym.integrations import tiny_models

    from .helpers import TEMPLATE

    return tiny_models.build_tokenizer(["What is the capital of France?", "Paris"], chat_template=TEMPLATE,
                                       vocab_size=600)


@pytest.fixture(scope="session")
def tiny_lm(tokenizer: Any) -> Any:
    from mmsearch_gym.integrations import tiny_models

    return tiny_models.build_text_lm(tokenizer, size="tiny", seed=0).eval()
