"""Stable-Baselines3 integration: learn *when* and *how* to search with a classic RL policy.

A language model decides in text; a classic policy (PPO, DQN) needs a fixed-size vector in and
a discrete choice out. :class:`SearchDecisionEnv` is that view of an :class:`MMSearchEnv`:

* **Actions** (``Discrete``): ``answer`` now from the evidence so far; ``image_search`` of the
  whole image; ``crop:<target>`` (an image search of one object: at one of nine grid
  positions, "top left" ... "bottom right", or the largest / smallest / second from the left,
  the words the world's crop questions and the grounder share); ``text_search`` with a query
  built from the question and the hits so far.
* **Observation** (``Box`` of float32 in [-1, 1]): image features of the task image, a hashed
  bag of words of the question, what the searches so far returned (top scores, whether an
  entity was identified, words of the top image hit's title, whether a fact answer is in the
  hits) and turn / budget counters.

The skill being learned is the *decision*; the text around it is deterministic: answers and
queries come from an evidence reader (the world's ``EvidenceReader``: counting and layout
perception of the scene for search-free questions, reading the hits otherwise), crops are
snapped to the object at the chosen position by a grounder (the env's, else
:class:`~mmsearch_gym.grounding.AnnotationGrounder`, a stand-in for a detector such as the
Grounding DINO of DeepMMSearch-R1), and the action is formatted in the env's dialect and sent
to the real ``env.step``. The reward is the env's reward, unchanged.

No leak of the gold answer or the category: every observation feature is a function of the
question text, the task image pixels, the hits the env returned, and the counters. Nothing
reads ``task.answers``, ``task.category``, ``task.meta`` or the scene annotations
(``task.objects`` are used only to *act*: perception for the answer text and the crop box,
never to observe).

:class:`SB3Policy` plays a trained model through the :class:`~mmsearch_gym.policies.Policy`
protocol (``mmsearch-gym eval --policy sb3:PATH``): it rebuilds the same observation from each
``EpisodeView`` and returns the formatted action text. :func:`train_recipe` trains PPO or DQN
from a recipe in ``policies/``.

Models are saved twice: SB3's own ``model.zip`` (to resume training with SB3; it holds
pickled objects, so load only zips you trust) and a pickle-free export, ``model.json`` (the
decision config and network shape) plus ``model.npz`` (the weights), which
:meth:`SB3Policy.load` reads.

Modules: :mod:`.decision` (config, evidence, features, the deterministic core),
:mod:`.wrapper` (:class:`SearchDecisionEnv`), :mod:`.policy` (:class:`SB3Policy`, export),
:mod:`.memo` (training speed-ups) and :mod:`.recipes` (:func:`train_recipe`).
"""

from __future__ import annotations

from .decision import (
                       ACTION_ANSWER,
                       ACTION_IMAGE,
                       ACTION_TEXT,
                       CROP_POSITIONS,
                       CROP_TARGETS,
                       DecisionConfig,
                       DecisionCore,
                       Evidence,
                       FeatureCache,
                       decision_spaces,
                       hashed_bag,
                       window_box,
)
from .memo import MemoBackend, preload_images
from .policy import EXPORT_FORMAT, SB3Policy, export_policy
from .recipes import make_vec_env, rollout_stats, summarise, train_recipe
from .wrapper import SearchDecisionEnv

__all__ = [
    "ACTION_ANSWER", "ACTION_IMAGE", "ACTION_TEXT", "CROP_POSITIONS", "CROP_TARGETS", "EXPORT_FORMAT",
    "DecisionConfig", "DecisionCore", "Evidence", "FeatureCache", "MemoBackend", "SB3Policy", "SearchDecisionEnv",
    "decision_spaces", "export_policy", "hashed_bag", "make_vec_env", "preload_images", "rollout_stats", "summarise",
    "train_recipe", "window_box",
]
