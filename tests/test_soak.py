"""The soak's own machinery (benchmarks/soak.py): how it stops."""

from __future__ import annotations

import random
import threading
import time

import pytest

from benchmarks import soak


def test_an_operation_begun_as_the_workers_stop_is_still_served(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker looks at its stop before each operation, so its last one may
    connect just after the soak asked it to stop.  The services must accept it
    still: a connection nobody accepts is never read, and the worker waits for
    credits until its timeouts run out (a soak's "a worker did not stop")."""
    monkeypatch.setattr(soak, "TIMEOUT", 10.0)
    monkeypatch.setattr(soak, "ACCEPT_POLL", 0.1)
    stop = threading.Event()
    one_operation = soak.one_operation
    operations: list[str] = []

    def late_operation(ports: tuple[int, int], rng: random.Random, choice: str) -> int:
        stop.wait()  # the worker began its operation just before the stop was asked
        time.sleep(3 * soak.ACCEPT_POLL)  # the services' accept loops have looked at their stop since
        operations.append(choice)
        return one_operation(ports, rng, "framed")

    monkeypatch.setattr(soak, "one_operation", late_operation)
    counter = soak.Counter()
    with soak.services(counter) as ports:
        worker = threading.Thread(target=soak.worker, args=(ports, 1, stop, counter))
        worker.start()
        stop.set()
        worker.join(2 * soak.TIMEOUT + 5)
        assert not worker.is_alive()
    values = counter.take()
    assert len(operations) == 1
    assert "failures" not in values, values
    assert values["operations"] == 1
