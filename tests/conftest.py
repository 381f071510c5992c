"""Shared fixtures: a tiny task set with real (generated) images and an in-memory backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fixture_world import france_backend, scene_png

from mmsearch_gym.search.base import MemoryBackend
from mmsearch_gym.tasks import SceneObject, Task, TaskSet


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """Never write search caches into the user's home during tests."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MMSEARCH_GYM_CACHE", str(tmp_path_factory.mktemp("search-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def ray_cluster(request: pytest.FixtureRequest) -> Iterator[str]:
    """A private local Ray instance with 2 CPUs for one test module; yields its GCS address.

    The module's own classes (test backends) reach Ray's workers by value: they cannot import it.
    """
    ray = pytest.importorskip("ray", reason="the Ray executor needs the extra: pip install 'mmsearch-gym[ray]'")
    ray.cloudpickle.register_pickle_by_value(request.module)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(request.module)


@pytest.fixture
def tiny_tasks() -> TaskSet:
    objects = (SceneObject("flag", (200, 20, 300, 90), entity="fr",
                           attributes={"position": "top right", "size_rank": "largest"}),)
    return TaskSet([
        Task("t0", "Which country's flag is shown at the top right?", ("France", "French Republic"),
             category="crop", image_bytes=scene_png((10, 120, 30)), objects=objects),
        Task("t1", "What is the capital of the country whose flag is shown?", ("Paris",),
             category="image_then_text", image_bytes=scene_png((200, 10, 10))),
        Task("t2", "How many flags are in this picture?", ("1", "one"),
             category="search_free", image_bytes=scene_png((0, 0, 200), (200, 300)), objects=objects),
    ], name="tiny")


@pytest.fixture
def memory_backend() -> MemoryBackend:
    return france_backend()
