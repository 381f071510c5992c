"""Trajectories to and from Hugging Face datasets (the hub's format for sharing training data).

:func:`to_hf_dataset` turns recorded episodes into a ``datasets.Dataset`` with one row per
episode: the task image and the image-search result thumbnails as ``Image`` features (so the
hub viewer shows them), the question, answers, label, reward, a plain chat ``messages`` column
(system/user/assistant/tool-result turns as text) for a quick look, and the full trajectory as
its JSON line. :func:`from_hf_dataset` reads the trajectories back exactly (the ``trajectory``
column is the source of truth), so a dataset saved with ``save_to_disk`` or pushed to the hub
feeds the SFT recipe (``build_sft_dataset(source=trajectories)``), ``rescore`` and ``render``
like a JSONL file. ``datasets`` is imported inside the functions (extra ``hf``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmsearch_gym.errors import ConfigError, DataError
from mmsearch_gym.trajectories import Trajectory, read_trajectories

if TYPE_CHECKING:
    import datasets

    from mmsearch_gym.tasks import TaskSet

__all__ = ["from_hf_dataset", "load_trajectories", "to_hf_dataset"]

_TRAJECTORY_COLUMN = "trajectory"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise ConfigError("Hugging Face datasets are needed here: pip install mmsearch-gym[hf]") from None
    return datasets


def _task_image(trajectory: Trajectory, tasks: TaskSet | None) -> bytes | None:
    """PNG of the task image (from the task set) or the trajectory's embedded thumbnail."""
    if tasks is not None and trajectory.task_id in tasks:
        buf = io.BytesIO()
        tasks.by_id(trajectory.task_id).load_image().save(buf, format="PNG")
        return buf.getvalue()
    return trajectory.image.thumbnail


def _messages(trajectory: Trajectory) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": trajectory.question}]
    for index, turn in enumerate(trajectory.turns):
        messages.append({"role": "assistant", "content": turn.text})
        if turn.observation and index < len(trajectory.turns) - 1:
            messages.append({"role": "tool", "content": turn.observation})
    return messages


def to_hf_dataset(trajectories: Iterable[Trajectory], *, tasks: TaskSet | None = None,
                  labels: Mapping[str, str] | None = None, thumbnails: bool = True) -> datasets.Dataset:
    """One row per episode, images as ``Image`` features.

    ``tasks`` gives the full-resolution task images (otherwise the thumbnail embedded with
    ``--embed-images``, or no image); ``labels`` maps task ids to ``search_free`` /
    ``search_required`` (default: from the trajectory's category); ``thumbnails`` adds the
    embedded image-search result thumbnails in turn order.
    """
    from mmsearch_gym.tasks import SEARCH_FREE

    datasets = _datasets()
    rows: dict[str, list[Any]] = {name: [] for name in (
        "task_id", "category", "label", "question", "answers", "policy", "correct", "reward", "turns",
        "image_searches", "text_searches", "image", "thumbnails", "messages", _TRAJECTORY_COLUMN)}
    for trajectory in trajectories:
        label = (labels or {}).get(trajectory.task_id) or (
            SEARCH_FREE if trajectory.category == SEARCH_FREE else "search_required")
        image = _task_image(trajectory, tasks)
        shots = [{"bytes": hit.thumbnail, "path": None} for turn in trajectory.turns for hit in turn.hits
                 if thumbnails and hit.thumbnail]
        values = {
            "task_id": trajectory.task_id, "category": trajectory.category, "label": label,
            "question": trajectory.question, "answers": list(trajectory.answers), "policy": trajectory.policy,
            "correct": trajectory.correct, "reward": float(trajectory.reward.reward), "turns": len(trajectory.turns),
            "image_searches": trajectory.image_searches, "text_searches": trajectory.text_searches,
            "image": None if image is None else {"bytes": image, "path": None}, "thumbnails": shots,
            "messages": _messages(trajectory), _TRAJECTORY_COLUMN: trajectory.to_line(),
        }
        for name, value in values.items():
            rows[name].append(value)
    if not rows["task_id"]:
        raise DataError("no trajectories to convert")
    features = datasets.Features({
        "task_id": datasets.Value("string"), "category": datasets.Value("string"),
        "label": datasets.Value("string"), "question": datasets.Value("string"),
        "answers": datasets.Sequence(datasets.Value("string")), "policy": datasets.Value("string"),
        "correct": datasets.Value("bool"), "reward": datasets.Value("float64"), "turns": datasets.Value("int32"),
        "image_searches": datasets.Value("int32"), "text_searches": datasets.Value("int32"),
        "image": datasets.Image(), "thumbnails": datasets.Sequence(datasets.Image()),
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
        _TRAJECTORY_COLUMN: datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(rows, features=features)


def from_hf_dataset(data: datasets.Dataset | str | Path) -> list[Trajectory]:
    """The trajectories of a dataset made by :func:`to_hf_dataset` (an object or a
    ``save_to_disk`` folder), bit for bit as they were recorded."""
    datasets = _datasets()
    if isinstance(data, (str, Path)):
        try:
            data = datasets.load_from_disk(str(data))
        except Exception as exc:  # noqa: BLE001 - datasets raises FileNotFoundError or its own errors
            raise DataError(f"{data} is not a datasets save_to_disk folder: {exc}") from None
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            raise DataError(f"the dataset has the splits {sorted(data)}; pass one of them")
        data = next(iter(data.values()))
    if _TRAJECTORY_COLUMN not in data.column_names:
        raise DataError(f"the dataset has no {_TRAJECTORY_COLUMN!r} column (columns: {data.column_names}); "
                        "it was not written by mmsearch_gym.hf_datasets.to_hf_dataset")
    out = []
    for index, line in enumerate(data.select_columns([_TRAJECTORY_COLUMN])[_TRAJECTORY_COLUMN]):
        try:
            out.append(Trajectory.from_json(json.loads(line)))
        except (DataError, ValueError) as err:
            raise DataError(f"dataset row {index}: bad trajectory: {err}") from None
    return out


def load_trajectories(path: str | Path) -> list[Trajectory]:
    """Trajectories from a JSONL file or from a ``save_to_disk`` folder of :func:`to_hf_dataset`."""
    return from_hf_dataset(path) if Path(path).is_dir() else read_trajectories(path)
