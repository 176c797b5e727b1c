"""How many photos the service bench sends first to fill the worker's prepare cache."""

from __future__ import annotations

from bench.simulated import WARM_UP_STEP, warm_up_photos

MIB = 2**20


def counts(entries: int, mib: float, max_mib: int = 256) -> dict[str, int]:
    return {
        "hits": 0,
        "misses": entries,
        "entries": entries,
        "bytes": int(mib * MIB),
        "max_bytes": max_mib * MIB,
    }


def test_a_first_step_then_as_many_as_the_room_left_takes() -> None:
    start = counts(2, 0.02)  # the bench's two tiny warm-up jobs
    assert warm_up_photos(start, start, 0, 2000) == WARM_UP_STEP
    # 32 photos added 0.9 MiB each: 227 more fill the 256 MiB, and one more evicts.
    after = counts(2 + 32, 0.02 + 32 * 0.9)
    more = warm_up_photos(start, after, 32, 2000)
    assert more == int((256 - 0.02 - 32 * 0.9) // 0.9) + 1 == 253
    full = counts(2 + 32 + more, 0.02 + (32 + more) * 0.9)
    assert full["bytes"] > full["max_bytes"] - 0.9 * MIB
    assert warm_up_photos(start, full, 32 + more, 2000) == 0


def test_a_cache_that_evicts_already_is_full() -> None:
    start = counts(280, 255.5)  # an earlier round filled it with smaller pictures
    assert warm_up_photos(start, start, 0, 2000) == WARM_UP_STEP
    assert warm_up_photos(start, counts(270, 255.8), WARM_UP_STEP, 2000) == 0


def test_never_more_than_asked_and_nothing_without_a_cache() -> None:
    start = counts(0, 0)
    assert warm_up_photos(start, start, 0, 4) == 4
    assert warm_up_photos(start, counts(4, 0.04), 4, 4) == 0
    assert warm_up_photos(start, counts(32, 28.8), 32, 100) == 68
    assert warm_up_photos(start, start, 0, 0) == 0
    assert warm_up_photos(None, None, 0, 2000) == 0  # a worker that reports no cache
    no_cache = counts(0, 0, max_mib=0)  # prepare_cache_mb 0
    assert warm_up_photos(no_cache, no_cache, 0, 2000) == 0
