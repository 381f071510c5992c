"""mmsearch_gym: multimodal web search as a Gymnasium environment.

    import gymnasium as gym, mmsearch_gym
    env = gym.make("MMSearch-v0")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step("<reason>..</reason><search><img></search>")

Importing the package registers every env id shipped in ``envs/``.
"""

from mmsearch_gym.actions import Action, Answer, Dialect, ImageSearch, Invalid, Region, TextSearch, get_dialect
from mmsearch_gym.env import MMSearchEnv
from mmsearch_gym.errors import ConfigError, DataError, MMSearchError
from mmsearch_gym.registration import make_env, register_envs
from mmsearch_gym.reward import RewardBreakdown, RewardSpec, episode_reward, score_episode
from mmsearch_gym.search.base import Hit, ImageQuery, SearchBackend, SearchError
from mmsearch_gym.tasks import SceneObject, Task, TaskSet

__version__ = "0.1.0"

__all__ = [
    "Action", "Answer", "ConfigError", "DataError", "Dialect", "Hit", "ImageQuery", "ImageSearch",
    "Invalid", "MMSearchEnv", "MMSearchError", "Region", "RewardBreakdown", "RewardSpec",
    "SceneObject", "SearchBackend", "SearchError", "Task", "TaskSet", "TextSearch",
    "episode_reward", "get_dialect", "make_env", "register_envs", "score_episode",
]

ENV_IDS = register_envs()
