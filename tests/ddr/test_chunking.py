"""Adaptive chunk sizing: simulated workloads (no clocks) against the documented policy."""

import random

import pytest

from ddr._chunking import ChunkSizer


def run(sizer, cost, steps=30, memory=None, noise=0.0, seed=0):
    """Hand out ``steps`` sizes; each chunk 'takes' ``cost(size)`` seconds (and ``memory(size)`` MB)."""
    rng = random.Random(seed)
    sizes = []
    for _ in range(steps):
        size = sizer.next_size()
        sizes.append(size)
        jitter = 1 + rng.uniform(-noise, noise)
        sizer.observe(size, cost(size) * jitter, None if memory is None else memory(size) * jitter)
    return sizes


def test_first_chunks_are_small_until_a_report_arrives():
    sizer = ChunkSizer(initial=10_000)
    assert [sizer.next_size() for _ in range(50)] == [10_000] * 50


def test_reaches_the_target_time_despite_a_fixed_overhead():
    # 2 s per chunk plus 0.1 ms per event: 30 s is reached at 280k events. Estimating
    # per-event cost as wall/events on the first 10k chunks would say 100k.
    sizer = ChunkSizer(initial=10_000, target_seconds=30, growth=4)
    sizes = run(sizer, lambda n: 2 + 1e-4 * n, steps=6)
    assert sizes[:3] == [10_000, 40_000, 160_000]  # growth limited to 4x per step
    assert sizes[3:] == [pytest.approx(280_000, rel=0.001)] * 3
    stats = sizer.statistics()
    assert stats.overhead_seconds == pytest.approx(2, rel=0.01)
    assert stats.seconds_per_event == pytest.approx(1e-4, rel=0.01)


def test_noisy_timings_still_land_near_the_target():
    sizer = ChunkSizer(initial=10_000, target_seconds=30)
    sizes = run(sizer, lambda n: 2 + 1e-4 * n, steps=60, noise=0.2, seed=3)
    assert all(150_000 < s < 450_000 for s in sizes[-20:]), sizes[-20:]


def test_default_growth_reaches_two_million_in_two_steps():
    sizer = ChunkSizer(initial=10_000, target_seconds=30)
    assert run(sizer, lambda n: 0.02 + 1.6e-7 * n, steps=4) == [10_000, 160_000, 2_000_000, 2_000_000]


def test_growth_needs_evidence_not_just_many_reports():
    sizer = ChunkSizer(initial=10_000, growth=4)
    for _ in range(20):  # many fast reports about small chunks
        sizer.observe(10_000, 0.01)
    assert sizer.next_size() == 40_000


def test_shrinks_at_once_when_chunks_get_slow():
    sizer = ChunkSizer(initial=100_000, target_seconds=30, min_size=1_000)
    sizer.observe(100_000, 300.0)  # 3 ms per event: ten times the target
    assert sizer.next_size() == 10_000


def test_steady_state_at_one_size_keeps_the_target():
    # once every recent chunk has the same size the slope cannot be fitted; aiming with
    # wall/events from that size keeps it where a + b * size is the target
    sizer = ChunkSizer(initial=280_000, target_seconds=30)
    assert run(sizer, lambda n: 2 + 1e-4 * n, steps=20) == [280_000] * 20


def test_adapts_when_the_per_event_cost_changes():
    sizer = ChunkSizer(initial=10_000, target_seconds=30)
    run(sizer, lambda n: 2 + 1e-4 * n, steps=10)
    sizes = run(sizer, lambda n: 2 + 2e-4 * n, steps=40)  # heavier events: 140k reach the target
    assert sizes[-1] == pytest.approx(140_000, rel=0.02)


def test_overhead_above_the_target_grows_chunks_to_amortise_it():
    sizer = ChunkSizer(initial=10_000, target_seconds=30, max_size=1_000_000, growth=4)
    sizes = run(sizer, lambda n: 60 + 1e-7 * n, steps=8)
    # one size cannot tell overhead from per-event cost: the safe guess shrinks once;
    # two sizes with the same time show the overhead, and chunks grow 4x per step
    assert sizes[0] == 10_000 and sizes[1] < 10_000
    assert sizes[2:] == [40_000, 160_000, 640_000] + [1_000_000] * 3


def test_memory_caps_the_size_below_the_allowed_fraction():
    # baseline 300 MB, 10 kB per event, 2000 MB allowed, half of it usable -> at most 70k events
    sizer = ChunkSizer(initial=10_000, target_seconds=30, memory_mb=2000, memory_fraction=0.5)
    sizes = run(sizer, lambda n: 1e-5 * n, memory=lambda n: 300 + 0.01 * n, steps=20)
    assert max(sizes) <= 70_000  # approached from below, never above
    assert 0.93 * 70_000 < sizes[-1] <= 70_000
    assert 0.01 < sizer.statistics().mb_per_event < 1000 / 65_000  # an overestimate of the true 0.01


def test_memory_estimate_stays_on_the_safe_side_of_noise():
    sizer = ChunkSizer(initial=10_000, target_seconds=1e9, memory_mb=2000, memory_fraction=0.5)
    sizes = run(sizer, lambda n: 1e-5 * n, memory=lambda n: 300 + 0.01 * n, steps=40, noise=0.15, seed=5)
    assert all(300 + 0.01 * s <= 1000 for s in sizes)
    assert sizes[-1] > 50_000


def test_memory_is_ignored_without_an_allocation():
    sizer = ChunkSizer(initial=10_000, target_seconds=30, max_size=200_000)
    sizes = run(sizer, lambda n: 1e-5 * n, memory=lambda n: 300 + 1.0 * n, steps=6)
    assert sizes[-1] == 200_000


def test_exhaustion_caps_every_later_size_below_half_the_failure():
    sizer = ChunkSizer(initial=10_000, target_seconds=30, min_size=1_000)
    run(sizer, lambda n: 1e-5 * n, steps=6)
    assert sizer.next_size() > 100_000
    sizer.shrink_after_exhaustion(100_000)
    sizes = run(sizer, lambda n: 1e-5 * n, steps=10)
    assert max(sizes) == 50_000
    sizer.shrink_after_exhaustion(1_000)  # even below min_size
    assert sizer.next_size() == 500
    sizer.shrink_after_exhaustion(80_000)  # a later, larger failure does not loosen the cap
    assert sizer.next_size() == 500
    assert sizer.statistics().cap == 500


def test_fixed_size_ignores_measurements_but_not_exhaustion():
    sizer = ChunkSizer(fixed=5_000)
    run(sizer, lambda n: 100.0, steps=5)
    assert sizer.next_size() == 5_000
    sizer.shrink_after_exhaustion(5_000)
    assert sizer.next_size() == 2_500


def test_sizes_stay_within_min_and_max():
    sizer = ChunkSizer(initial=10, min_size=1_000, max_size=50_000)
    assert sizer.next_size() == 1_000  # initial below min_size is raised to it
    sizes = run(sizer, lambda n: 1e-9 * n, steps=10) + run(sizer, lambda n: 10.0 * n, steps=5)
    assert min(sizes) == 1_000 and max(sizes) == 50_000
    odd = ChunkSizer(initial=10_000, min_size=1_000, max_size=500)  # min above max: max wins
    assert odd.next_size() == 500


def test_bad_observations_are_ignored():
    sizer = ChunkSizer(initial=10_000)
    for events, wall, mem in [(0, 1.0, None), (100, -1.0, None), (100, float("nan"), None), (-5, 1.0, 3.0)]:
        sizer.observe(events, wall, mem)
    assert sizer.statistics().observations == 0 and sizer.next_size() == 10_000
    sizer.observe(10_000, 1.0, float("inf"))  # a bad memory reading drops only the memory
    assert sizer.statistics().observations == 1 and sizer.statistics().mb_per_event is None


def test_history_is_bounded_and_statistics_count_everything():
    sizer = ChunkSizer(initial=2_000)
    for _ in range(1500):
        sizer.next_size()
    assert len(sizer.history) == 1000 and set(sizer.history) == {2_000}
    stats = sizer.statistics()
    assert (stats.handed_out, stats.smallest, stats.largest, stats.last) == (1500, 2_000, 2_000, 2_000)


@pytest.mark.parametrize("kwargs", [dict(max_size=0), dict(fixed=0), dict(target_seconds=0), dict(growth=1),
                                    dict(memory_fraction=0), dict(memory_fraction=1.5)])
def test_invalid_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        ChunkSizer(**kwargs)
