"""Behaviour 11: one immutable, self-describing stats snapshot; errors and their messages."""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest
from django.db import OperationalError

from django_dbpool.pool import (
    CLOSE_REASONS,
    PoolClosed,
    PoolError,
    PoolExhausted,
    PoolStats,
    PoolTimeout,
    PoolUnavailable,
)
from django_dbpool.pool.stats import BUCKETS_SECONDS, COUNTERS, GAUGES, HISTOGRAMS, PIN_REASONS

from .fakes import closing, make_pool, wait_until


def test_errors_are_operational_errors():
    for cls in (PoolTimeout, PoolExhausted, PoolUnavailable, PoolClosed):
        assert issubclass(cls, PoolError)
        assert issubclass(cls, OperationalError)


def test_timeout_message_states_the_wait_the_pool_state_and_the_fix():
    pool, _ = make_pool(MAX_SIZE=2)
    with closing(pool):
        a, b = pool.acquire(), pool.acquire()
        with pytest.raises(PoolTimeout) as info:
            pool.acquire(timeout=0.05)
        message = str(info.value)
        assert "after waiting 0.05 s" in message
        assert "(size 2, in use 2, waiting 0, max 2)" in message
        assert "Raise MAX_SIZE" in message
        assert "LEAK_TIMEOUT" in message
        pool.release(a)
        pool.release(b)


def test_max_waiting_rejects_one_more_caller_at_once():
    pool, _ = make_pool(MAX_SIZE=1, MAX_WAITING=1)
    with closing(pool):
        held = pool.acquire()
        t = threading.Thread(target=lambda: pool.release(pool.acquire(timeout=30)))
        t.start()
        assert wait_until(lambda: pool.stats().waiting == 1)
        with pytest.raises(PoolExhausted, match="MAX_WAITING=1"):
            pool.acquire(timeout=30)
        pool.release(held)
        t.join(timeout=30)
        assert pool.stats().exhausted == 1


def test_every_stats_field_is_exactly_one_kind():
    names = {f.name for f in dataclasses.fields(PoolStats)}
    kinds = ["name", "closed", "pins", *GAUGES, *COUNTERS, *HISTOGRAMS]
    assert len(kinds) == len(set(kinds))
    assert names == set(kinds)


def test_stats_snapshot_counts_what_happened():
    pool, _driver = make_pool(MAX_SIZE=2)
    with closing(pool):
        for _ in range(5):
            pool.release(pool.acquire())
        a = pool.acquire()
        b = pool.acquire(timeout=10)
        with pytest.raises(PoolTimeout):
            pool.acquire(timeout=0.01)
        pool.release(a, broken=True)
        pool.release(b)
        stats = pool.stats()

    assert stats.name == pool.name
    assert (stats.size, stats.idle, stats.in_use, stats.waiting) == (1, 1, 0, 0)
    assert (stats.min_size, stats.max_size) == (0, 2)
    assert stats.acquired == 7
    assert stats.timeouts == 1
    assert stats.opened == 2
    assert dict(stats.closed) == dict.fromkeys(CLOSE_REASONS, 0) | {"broken": 1}
    assert stats.closed_total == 1
    assert stats.wait_seconds.count == 7
    assert stats.hold_seconds.count == 7
    assert stats.connect_seconds.count == 2
    for hist in (stats.wait_seconds, stats.hold_seconds, stats.connect_seconds):
        bounds = [bound for bound, _ in hist.buckets]
        counts = [n for _, n in hist.buckets]
        assert bounds == [*BUCKETS_SECONDS, float("inf")]
        assert counts == sorted(counts)  # cumulative
        assert counts[-1] == hist.count
        assert hist.max >= 0
        assert hist.sum >= 0


def test_stats_snapshot_is_immutable_and_does_not_change_afterwards():
    pool, _ = make_pool()
    with closing(pool):
        before = pool.stats()
        pool.release(pool.acquire())
        assert before.acquired == 0
        with pytest.raises(dataclasses.FrozenInstanceError):
            before.acquired = 5  # type: ignore[misc]
        with pytest.raises(TypeError):
            before.closed["idle"] = 1  # type: ignore[index]


def test_as_dict_is_json_ready_and_grouped_by_kind():
    pool, _ = make_pool()
    with closing(pool):
        pool.release(pool.acquire())  # waits for the first connect
        pool.release(pool.acquire())  # fast path: zero wait
        data = pool.stats().as_dict()
    json.dumps(data)
    assert set(data) == {"name", "gauges", "counters", "histograms"}
    assert set(data["gauges"]) == set(GAUGES)
    assert set(data["counters"]) == {*COUNTERS, "closed", "pins"}
    assert set(data["counters"]["closed"]) == set(CLOSE_REASONS)
    wait = data["histograms"]["wait_seconds"]
    assert wait["count"] == 2
    assert wait["buckets"]["+Inf"] == 2
    assert wait["buckets"]["0.0001"] >= 1


def test_pins_count_leases_once_and_each_reason():
    pool, _ = make_pool()
    with closing(pool):
        assert dict(pool.stats().pins) == dict.fromkeys(PIN_REASONS, 0)
        # One lease held past release points by a transaction, then an open cursor; another
        # by pinned() alone.
        pool.count_pin("transaction", first=True)
        pool.count_pin("cursor", first=False)
        pool.count_pin("pinned", first=True)
        stats = pool.stats()
    assert stats.pinned == 2
    assert dict(stats.pins) == dict.fromkeys(PIN_REASONS, 0) | {
        "transaction": 1,
        "cursor": 1,
        "pinned": 1,
    }
    assert stats.as_dict()["counters"]["pins"]["cursor"] == 1
