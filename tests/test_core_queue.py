"""The model's fair queue: reentrant, one holder at a time, round robin over people, places reported."""

from __future__ import annotations

import threading
import time

from engine.core.jobs import JobRunner
from engine.core.queue import FairLock, acting_as, current_owner


def _wait_until_waiting(lock: FairLock, n: int, timeout: float = 5.0) -> None:
    """Return once `n` requests wait for `lock` (read from its queue: the order of arrivals is then
    known, not guessed from a sleep); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while len(lock._waiting) < n:
        assert time.monotonic() < deadline, f"{n} requests never queued (waiting: {lock.queue()})"
        time.sleep(0.001)  # a poll of the queue's state, not a guess at how long a thread takes


def test_reentrant_and_exclusive():
    lock = FairLock()
    inside = []
    with lock, lock:  # nested engine calls re-acquire
        t = threading.Thread(target=lambda: (lock.acquire(), inside.append(1), lock.release()))
        t.start()
        _wait_until_waiting(lock, 1)
        assert inside == [] and lock.queue() == ["local", "local"]  # it waits while this thread holds it
    t.join(2)
    assert inside == [1]
    assert lock.acquire(blocking=False) and (lock.release() is None)


def test_round_robin_over_owners_and_places():
    """Alice queues three requests before Bob's one: Bob is served after Alice's first, not after all three."""
    lock = FairLock()
    order, threads = [], []
    lock.acquire()  # held by the test (owner "local") while the queue fills

    def request(owner: str, tag: str) -> None:
        with acting_as(owner), lock:
            order.append(tag)

    for owner, tag in [("alice", "a1"), ("alice", "a2"), ("alice", "a3"), ("bob", "b1")]:
        threads.append(threading.Thread(target=request, args=(owner, tag)))
        threads[-1].start()
        _wait_until_waiting(lock, len(threads))  # this request is queued before the next one starts
    assert lock.place("local") == 1
    assert lock.place("alice") == 2 and lock.place("bob") == 3 and lock.place("carol") is None
    lock.release()
    for t in threads:
        t.join(5)
    assert order == ["a1", "b1", "a2", "a3"]


def test_timeout_leaves_the_queue_clean():
    lock = FairLock()
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join(2)
    assert got == [False] and lock.queue() == ["local"]
    lock.release()
    assert lock.queue() == []


def test_jobs_act_for_the_owner_that_started_them():
    runner = JobRunner()
    with acting_as("alice"):
        job = runner.start("k", lambda job: current_owner())
    job.wait(5)
    assert job.result == "alice" and job.state == "finished"


def test_all_locks_lists_the_live_locks_of_this_process():
    import gc

    from engine.core.queue import all_locks

    lock = FairLock()
    assert any(found is lock for found in all_locks())
    count = len(all_locks())
    del lock
    gc.collect()
    assert len(all_locks()) == count - 1  # a lock of an unloaded model is not kept alive by the list
