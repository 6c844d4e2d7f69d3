"""The compute thread knows whether it has work: queued, running, finished, or cancelled unrun."""

from __future__ import annotations

import threading

from splitnn.server.servicer import ComputeExecutor


def test_idle_until_work_is_queued_and_again_once_it_is_done() -> None:
    executor = ComputeExecutor()
    release = threading.Event()
    try:
        assert executor.idle
        running = executor.submit(release.wait, 10)
        queued = executor.submit(lambda: 42)
        assert not executor.idle
        release.set()
        assert queued.result(timeout=10) == 42 and running.result(timeout=10)
        executor.submit(lambda: None).result(timeout=10)
        assert executor.idle
    finally:
        release.set()
        executor.shutdown(wait=True)


def test_work_cancelled_before_it_ran_leaves_it_idle() -> None:
    executor = ComputeExecutor()
    release = threading.Event()
    try:
        running = executor.submit(release.wait, 10)
        queued = executor.submit(lambda: None)
        assert queued.cancel()  # the worker is busy: the queued item has not started
        release.set()
        running.result(timeout=10)
        executor.submit(lambda: None).result(timeout=10)
        assert executor.idle
    finally:
        release.set()
        executor.shutdown(wait=True)


def test_work_that_raises_leaves_it_idle() -> None:
    executor = ComputeExecutor()
    try:
        failed = executor.submit(lambda: 1 / 0)
        assert isinstance(failed.exception(timeout=10), ZeroDivisionError)
        executor.submit(lambda: None).result(timeout=10)
        assert executor.idle
    finally:
        executor.shutdown(wait=True)
