"""The dedupe index's two classes of keys, its runs, and reserving keys before they are written (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nori_wal import Position, WalConfig
from nori_wal.dedupe import AUTO_KEY_SIZE, PENDING, DedupeIndex, auto_count, index_for, is_auto_key
from nori_wal.errors import DedupeCapacityError

WINDOW, AUTO_WINDOW = 30, 10  # ms: caller keys, automatic keys (as WalConfig's: the automatic one shorter)


def _key(k: int) -> bytes:
    """Keys 0-5: a caller's; 6-11: automatic (16 bytes, 0x00 first)."""
    return b"caller-%d" % k if k < 6 else b"\x00" + b"%015d" % k


ops = st.lists(
    st.tuples(
        st.sampled_from(["add", "batch", "lookup", "expire"]),
        st.lists(st.integers(0, 11), min_size=1, max_size=4),
        st.integers(0, 12),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_keys=st.integers(1, 6), max_auto=st.integers(1, 6))
def test_two_classes_of_keys_each_with_its_window_and_its_cap(ops, max_keys, max_auto):
    """Against a model: a key is remembered exactly while within its class's window (automatic keys the
    shorter one), keeps its first position, and a new key past its own class's cap is refused, changing
    nothing; batches go in through reserve/place like the writer's, key by key through add."""
    index = DedupeIndex(WINDOW, max_keys, AUTO_WINDOW, max_auto)
    model: dict[bytes, tuple[Position, int]] = {}
    clock = 0
    for n, (op, ks, dt) in enumerate(ops):
        clock += dt
        keys = [_key(k) for k in ks]
        live = {k: v for k, v in model.items() if v[1] >= clock - (AUTO_WINDOW if is_auto_key(k) else WINDOW)}
        if op == "add":
            pos, key = Position(1, 100 * n), keys[0]
            if key in live:
                assert index.add(key, pos, clock) is False
            elif _over(live, [key], max_keys, max_auto):
                with pytest.raises(DedupeCapacityError):
                    index.add(key, pos, clock)
            else:
                assert index.add(key, pos, clock) is True
                model[key] = (pos, clock)
        elif op == "batch":
            index.expire(clock)  # (the writer's one-by-one path drops expired keys first)
            if len(set(keys)) != len(keys) or any(k in live for k in keys):
                continue  # (the fast path takes only batches of distinct new keys; all_new says so)
            assert index.all_new(keys)
            if _over(live, keys, max_keys, max_auto):
                with pytest.raises(DedupeCapacityError):
                    index.check_room(len(keys), clock, auto_count(keys))
                continue
            index.check_room(len(keys), clock, auto_count(keys))
            runs = index.reserve(keys, [10 * i for i in range(len(keys))], auto_count(keys), clock, unit=7)
            assert runs is not None
            assert [index.reserved(k) for k in keys] == [(7, 10 * i) for i in range(len(keys))]
            assert all(index.lookup(k, clock) is None for k in keys)  # reserved, not yet written
            index.place(runs, 2, 100 * n)
            for i, k in enumerate(keys):
                model[k] = (Position(2, 100 * n + 10 * i), clock)
        elif op == "lookup":
            for k in keys:
                assert index.lookup(k, clock) == (live[k][0] if k in live else None)
        else:
            index.expire(clock)
            model = live
            assert len(index) == len(live)
            assert index.auto_keys == sum(map(is_auto_key, live))


def _over(live: dict[bytes, tuple[Position, int]], new: list[bytes], max_keys: int, max_auto: int) -> bool:
    """Whether ``new`` keys (not live) would pass either class's cap."""
    keys = list(live) + new
    return sum(not is_auto_key(k) for k in keys) > max_keys or sum(map(is_auto_key, keys)) > max_auto


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 700)), max_size=40), span=st.integers(1, 1000))
def test_with_a_merge_span_a_key_is_remembered_at_least_its_window_and_at_most_the_span_longer(steps, span):
    """One-at-a-time adds share runs (Rule 4): a key may outlive its window by the span, never fall short."""
    window, auto_window = 2000, 1000
    index = DedupeIndex(window, 10**6, auto_window, 10**6, merge_span_ms=span)
    added: dict[bytes, int] = {}
    clock = 0
    for n, (k, dt) in enumerate(steps):
        clock += dt
        key = _key(k)
        w = auto_window if is_auto_key(key) else window
        if key in added and clock - added[key] <= w:
            assert index.lookup(key, clock) is not None  # within its window: remembered
        if key in added and clock - added[key] > w + span:
            assert index.lookup(key, clock) is None  # past its window and the span: forgotten
        if index.lookup(key, clock) is None:
            index.add(key, Position(0, n), clock)
            added[key] = clock
        index.expire(clock)


def test_reserve_refuses_a_repeated_key_and_changes_nothing():
    index = DedupeIndex(1000, 10)
    index.add(b"old", Position(0, 5), 1)
    assert index.reserve([b"a", b"b", b"a"], [0, 10, 20], 0, 2) is None
    assert len(index) == 1 and b"a" not in index and b"b" not in index
    runs = index.reserve([b"a", b"b"], [], 0, 2, unit=3)
    assert runs is not None and len(index) == 3
    index.release(runs)
    assert len(index) == 1 and index.lookup(b"old", 2) == Position(0, 5)


def test_a_mixed_batch_makes_a_run_per_class_and_key_files_list_both_in_log_order():
    index = DedupeIndex(1000, 10, 500, 10)
    auto = b"\x00" + b"a" * (AUTO_KEY_SIZE - 1)
    keys = [b"k1", auto, b"k2"]
    assert auto_count(keys) == 1
    runs = index.reserve(keys, [0, 40, 80], 1, 5, unit=0)
    assert runs is not None and len(runs) == 2
    index.place(runs, 4, 1000)
    assert index.segment_entries(4) == [(b"k1", 1000, 5), (auto, 1040, 5), (b"k2", 1080, 5)]
    assert index.lookup(auto, 504) == Position(4, 1040) and index.lookup(auto, 506) is None  # its own window
    assert index.lookup(b"k2", 1005) == Position(4, 1080)
    assert index.auto_keys == 1 and len(index) == 3


def test_pending_runs_are_not_in_key_files_and_do_not_stop_the_walk():
    index = DedupeIndex(1000, 10)
    placed = index.reserve([b"a"], [0], 0, 1)
    pending = index.reserve([b"b"], [0], 0, 1, unit=9)
    assert placed is not None and pending is not None and pending[0].segment_id == PENDING
    index.place(placed, 3, 64)
    assert index.segment_entries(3) == [(b"a", 64, 1)]
    assert index.reserved(b"b") == (9, 0) and index.reserved(b"a") is None


def test_automatic_keys_never_count_against_dedupe_max_keys():
    index = DedupeIndex(600_000, 2, 150_000, 1000)
    for i in range(900):
        key = b"\x00" + i.to_bytes(AUTO_KEY_SIZE - 1, "big")
        assert index.add(key, Position(0, i), 1_000 + i)
    index.add(b"caller-1", Position(0, 5000), 2_000)
    index.add(b"caller-2", Position(0, 5001), 2_000)
    with pytest.raises(DedupeCapacityError, match="dedupe_max_keys"):
        index.add(b"caller-3", Position(0, 5002), 2_000)
    many = [b"\x00" + i.to_bytes(AUTO_KEY_SIZE - 1, "big") for i in range(1000, 1200)]
    with pytest.raises(DedupeCapacityError, match="dedupe_max_auto_keys"):
        index.check_room(len(many), 2_000, len(many))
    index.expire(1_000 + 150_000 + 1_000)  # the automatic keys' window has passed: they are dropped
    assert index.auto_keys == 0 and len(index) == 2
    index.check_room(len(many), 152_000, len(many))


def test_the_config_states_the_automatic_window_and_cap():
    config = WalConfig()
    index = index_for(config)
    assert index.auto_window_ms == 180_000 and index.window_ms == 600_000
    assert index.max_auto_keys == config.dedupe_max_auto_keys and index.max_keys == config.dedupe_max_keys
    with pytest.raises(ValueError, match="auto_key_window must be a timedelta of at least"):
        WalConfig(auto_key_window=__import__("datetime").timedelta(seconds=60))
    with pytest.raises(ValueError, match="dedupe_max_auto_keys"):
        WalConfig(dedupe_max_auto_keys=0)


@given(st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=8))
def test_auto_count_counts_the_keys_of_automatic_shape(keys):
    keys = keys + [b"\x00" + bytes(15)] * (len(keys) % 3)
    assert auto_count(keys) == sum(map(is_auto_key, keys))


def test_a_full_garbage_collection_walks_the_index_per_batch_not_per_key():
    """A writer holds up to millions of keys: a full collection that walked each of them stalled every
    producer (80 ms at 1 M keys). Only a run per batch stays for the collector to look at."""
    import gc

    index = DedupeIndex(10**9, 10**6)
    gc.collect()
    before = {id(o) for o in gc.get_objects()}
    for b in range(200):
        keys = [b"batch-%d-key-%d" % (b, i) for i in range(100)]
        runs = index.reserve(keys, list(range(0, 10_000, 100)), 0, b)
        assert runs is not None
        index.place(runs, 0, b * 10_000)
    gc.collect()
    walked = sum(len(gc.get_referents(o)) for o in gc.get_objects() if id(o) not in before and o is not before)
    assert len(index) == 20_000
    assert walked < 20 * 200  # (20,000 keys in 200 runs: a handful of references per run)
    assert index.lookup(b"batch-7-key-42", 10) == Position(0, 7 * 10_000 + 4_200)
