"""Searches take turns in arrival order and pause at checkpoints for urgent work."""

from __future__ import annotations

import threading
import time

from indexer.whoosh.turns import Turns


def wait_until(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_turns_are_taken_in_arrival_order() -> None:
    turns = Turns()
    order: list[int] = []
    first = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with turns.turn():
            first.set()
            release.wait()

    def waiter(n: int) -> None:
        with turns.turn():
            order.append(n)

    t0 = threading.Thread(target=holder)
    t0.start()
    first.wait()
    threads = []
    for n in range(20):
        t = threading.Thread(target=waiter, args=(n,))
        t.start()
        threads.append(t)
        wait_until(lambda n=n: turns._next == n + 2)  # ticket n + 1 is handed out
    release.set()
    for t in [t0, *threads]:
        t.join()
    assert order == list(range(20))


def test_urgent_work_runs_while_the_search_waits_at_its_checkpoint() -> None:
    turns = Turns()
    events: list[str] = []
    at_checkpoint = threading.Event()
    urgent_started = threading.Event()

    def search() -> None:
        with turns.turn():
            events.append("search step 1")
            at_checkpoint.set()
            urgent_started.wait()
            turns.checkpoint()  # the urgent block is running: wait for it
            events.append("search step 2")

    def restore() -> None:
        at_checkpoint.wait()
        with turns.urgent(limit=60):
            urgent_started.set()
            time.sleep(0.05)
            events.append("restore")

    threads = [threading.Thread(target=search), threading.Thread(target=restore)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert events == ["search step 1", "restore", "search step 2"]
    # and a new search does not start while urgent work runs
    started: list[str] = []

    def later_search() -> None:
        with turns.turn():
            started.append("search")

    with turns.urgent(limit=60):
        t = threading.Thread(target=later_search)
        t.start()
        time.sleep(0.05)
        assert started == []
    t.join()
    assert started == ["search"]


def test_urgent_work_that_outlasts_its_limit_lets_searches_go_on() -> None:
    turns = Turns()
    events: list[str] = []
    at_checkpoint = threading.Event()
    urgent_started = threading.Event()

    def search() -> None:
        with turns.turn():
            at_checkpoint.set()
            urgent_started.wait()
            turns.checkpoint()  # waits out the limit, not the whole block
            events.append("search step 2")
        with turns.turn():  # and the next search starts too
            events.append("next search")

    t = threading.Thread(target=search)
    t.start()
    at_checkpoint.wait()
    with turns.urgent(limit=0.05):
        urgent_started.set()
        wait_until(lambda: len(events) == 2)  # as if waiting for a lock, past the limit
        events.append("urgent block ends")
    t.join()
    assert events == ["search step 2", "next search", "urgent block ends"]
    assert turns._urgent == []


def test_a_waiter_that_gives_up_does_not_block_the_ones_after_it() -> None:
    turns = Turns()
    done: list[str] = []

    def later_search() -> None:
        with turns.turn():
            done.append("search")

    with turns.turn():
        # the next ticket is abandoned (as if its thread were interrupted while waiting)
        with turns._cond:
            ticket = turns._next
            turns._next += 1
            turns._abandon(ticket)
        t = threading.Thread(target=later_search)
        t.start()
        time.sleep(0.05)
        assert done == []
    t.join(timeout=10)
    assert done == ["search"]
