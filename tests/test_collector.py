"""The cyclic collector is paused for a batch only, and always comes back on."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest

from indexer.jobs.collector import collector_paused


def test_paused_inside_a_batch_and_on_again_after() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_on_again_after_a_batch_that_fails() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("batch failed")
    assert gc.isenabled()


def test_nested_batches_resume_only_when_the_outer_one_ends() -> None:
    with collector_paused():
        with collector_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()


def test_left_off_when_it_was_off_before() -> None:
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_batches_in_two_threads_resume_when_both_end() -> None:
    inside, release = threading.Event(), threading.Event()

    def other_batch() -> None:
        with collector_paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=other_batch)
    thread.start()
    assert inside.wait(10)
    with collector_paused():
        pass
    assert not gc.isenabled()  # the other thread's batch is still running
    release.set()
    thread.join(10)
    assert gc.isenabled()


def test_a_cycle_made_in_a_batch_is_freed_after_it() -> None:
    class Node:
        pass

    with collector_paused():
        node = Node()
        node.self = node  # type: ignore[attr-defined]
        ref = weakref.ref(node)
        del node
        assert ref() is not None  # no collection while paused
    assert ref() is None
