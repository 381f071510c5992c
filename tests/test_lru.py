"""The shared LRU helper, and the caches that use it are LRU, not FIFO."""

from __future__ import annotations

import pytest

from mmsearch_gym.lru import LRU


def test_a_read_key_survives_eviction() -> None:
    lru: LRU[str, int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recently used
    lru.put("c", 3)
    assert "a" in lru and "b" not in lru and len(lru) == 2
    assert lru.get_or_make("b", lambda: 20) == 20 and "a" not in lru and "c" in lru


def test_get_or_make_calls_make_once_per_resident_key() -> None:
    calls = []
    lru: LRU[int, str] = LRU(3)
    for key in (1, 2, 1, 3, 1, 4, 1):
        lru.get_or_make(key, lambda key=key: calls.append(key) or str(key))
    assert calls == [1, 2, 3, 4]
    lru.discard(1)
    assert lru.get(1) is None
    lru.clear()
    assert len(lru) == 0
    with pytest.raises(ValueError):
        LRU(0)


def test_render_cache_is_lru() -> None:
    from PIL import Image

    from mmsearch_gym.world.scene import _RenderCache

    cache = _RenderCache(size=2)
    made: list[str] = []

    def maker(name: str):
        return lambda: made.append(name) or Image.new("RGB", (2, 2))

    for name in ("a", "b", "a", "c", "a"):
        cache.get(name, maker(name))
    assert made == ["a", "b", "c"]


def test_sb3_feature_cache_and_memo_backend_are_lru() -> None:
    np = pytest.importorskip("numpy")
    sb3 = pytest.importorskip("mmsearch_gym.integrations.sb3")
    from mmsearch_gym.search.base import Hit, MemoryBackend

    features = sb3.FeatureCache(2)
    for key in ("a", "b", "a", "c"):
        features.get(key, lambda: np.zeros(2))
    features.get("a", lambda: pytest.fail("a was evicted although it was used last but one"))

    class Counting(MemoryBackend):
        calls = 0

        def text_search(self, query: str, k: int) -> list[Hit]:
            Counting.calls += 1
            return super().text_search(query, k)

    memo = sb3.MemoBackend(Counting(default_text_hits=[Hit("t", "u", "s", 1.0, "m")]), max_entries=2)
    for query in ("a", "b", "a", "c", "a"):
        memo.text_search(query, 1)
    assert Counting.calls == 3
