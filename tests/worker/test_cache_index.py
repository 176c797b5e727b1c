"""The worker's index of its model process's prepare cache: bounded, least recently used first,
and never evicting a key a job is about to name."""

from __future__ import annotations

from worker.cache_index import CacheIndex


def test_the_least_recently_used_image_is_evicted_first() -> None:
    index = CacheIndex(max_bytes=300)
    assert index.add("a", 100, 13) == (True, [])
    assert index.add("b", 100, 1) == (True, [])
    assert index.pin(["a"]) == [13]  # "a" is now the most recently used
    index.unpin(["a"])
    assert index.add("c", 150, 4) == (True, ["b"])
    assert index.pin(["a", "b", "c"]) == [13, None, 4]


def test_a_pinned_image_is_not_evicted_until_unpinned() -> None:
    index = CacheIndex(max_bytes=200)
    index.add("a", 150, 13)
    assert index.pin(["a"]) == [13]  # a job found it and is preparing the others
    assert index.add("b", 150, 13) == (True, [])  # over the bound for now: "a" is in use
    index.unpin(["a"])
    assert index.add("c", 10, 1) == (True, ["a"])
    assert index.bytes == 160


def test_an_image_larger_than_the_whole_cache_is_not_kept() -> None:
    index = CacheIndex(max_bytes=100)
    assert index.add("huge", 101, 13) == (False, [])
    assert index.pin(["huge"]) == [None] and len(index) == 0
