"""The one Deadline type and the services' bounded worker pools (no gRPC)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from hybridpref.server.auth import VendorPolicy
from hybridpref.server.deadline import Deadline
from hybridpref.server.executors import CoreExecutor
from hybridpref.server.quota import QuotaBook
from hybridpref_client.core.errors import Cancelled, DeadlineExceeded, QuotaExceeded


def test_deadline_remaining_cap_and_cancel():
    assert Deadline().timeout() is None and not Deadline().expired
    capped = Deadline.capped(None, 5.0)  # no caller deadline: the server's maximum applies
    assert 4.9 < capped.remaining() <= 5.0
    assert Deadline.capped(2.0, 5.0).remaining() <= 2.0 and Deadline.capped(9.0, 5.0).remaining() <= 5.0
    assert Deadline.capped(None, 0).end is None  # 0 = no cap
    d = Deadline(10)
    assert Deadline.of(d) is d and 9.9 < d.timeout() < 10
    d.cancel("cancelled")
    with pytest.raises(Cancelled):
        d.check(what="routing")
    with pytest.raises(DeadlineExceeded):
        Deadline(0.0).check()


def test_each_downstream_call_gets_what_is_left():
    d = Deadline(1.0)
    first = d.timeout()
    time.sleep(0.2)
    assert d.timeout() < first - 0.15  # not one timeout frozen for every chunk


async def test_small_jobs_overtake_queued_big_ones_and_big_ones_are_not_starved():
    pool = CoreExecutor("t", workers=1, item_s=0.01)
    gate, order = threading.Event(), []
    blocker = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)  # the worker is busy
    big = asyncio.ensure_future(pool.run(order.append, "big", size=100))  # virtual start +1 s
    await asyncio.sleep(0.01)
    small = asyncio.ensure_future(pool.run(order.append, "small", size=1))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(blocker, big, small)
    assert order == ["small", "big"]
    gate.clear()
    blocker = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    big = asyncio.ensure_future(pool.run(order.append, "big2", size=10))  # virtual start +0.1 s
    await asyncio.sleep(0.3)  # it has waited longer than its size costs
    late = asyncio.ensure_future(pool.run(order.append, "late-small", size=1))
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(blocker, big, late)
    assert order[2:] == ["big2", "late-small"]
    pool.shutdown()


async def test_work_of_a_cancelled_call_never_starts():
    pool = CoreExecutor("t", workers=1)
    gate, ran = threading.Event(), []
    blocker = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.05)
    queued = asyncio.ensure_future(pool.run(ran.append, 1))
    await asyncio.sleep(0.01)
    queued.cancel()  # the caller left while its job waited
    await asyncio.sleep(0.01)  # the loop passes the cancellation on to the queued job
    gate.set()
    await blocker
    await asyncio.sleep(0.05)
    assert ran == [] and pool.queued == 0
    assert await pool.run(lambda: 7) == 7
    pool.shutdown()


def test_token_bucket_refills():
    now = [0.0]
    book = QuotaBook(clock=lambda: now[0])
    policy = VendorPolicy("v", (b"\0" * 32,), frozenset({"*"}), instances_per_minute=60, max_concurrent=1)
    book.take_instances(policy, 60)
    with pytest.raises(QuotaExceeded) as err:
        book.take_instances(policy, 1)
    assert 0.9 < err.value.retry_after_s <= 1.0  # one instance a second
    now[0] = 10.0
    book.take_instances(policy, 10)  # 10 s refilled 10
    leave = book.enter_call(policy)
    with pytest.raises(QuotaExceeded):
        book.enter_call(policy)
    leave()
    book.enter_call(policy)()
