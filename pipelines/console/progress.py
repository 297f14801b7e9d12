"""Progress from Ray workers to the driver's console, without forwarded prints.

Why not ``print`` in the worker: Ray forwards worker output to the driver
prefixed with ``(RayTrainWorker pid=...)``, interleaved with everything else,
and replays a finished progress bar after the job's result. Instead, workers
push small events to a ``ProgressBoard`` actor (no CPUs reserved, so it never
competes with the job for cores) and a thread on the driver drains it twice a
second and draws them (``pipelines.console.terminal``) or writes them elsewhere
(TensorBoard). The worker-side ``Reporter`` is fire-and-forget: it never waits
on the board and never fails the job because of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import ray

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    """Collects events (dicts, in order) and counters (summed) until the driver takes them."""

    def __init__(self):
        self._events: list[dict] = []
        self._counts: dict[str, float] = {}

    def push(self, event: dict) -> None:
        self._events.append(event)

    def add(self, key: str, amount: float) -> None:
        self._counts[key] = self._counts.get(key, 0) + amount

    def take(self) -> tuple[list[dict], dict[str, float]]:
        events, self._events = self._events, []
        return events, dict(self._counts)


class Reporter:
    """Worker side: sends events to a board, at most every ``every_s`` for ``throttled`` ones."""

    def __init__(self, board=None, every_s: float = 0.5):
        self.board = board
        self.every_s = every_s
        self._last = 0.0

    def push(self, event: dict, throttled: bool = False, wait: bool = False) -> bool:
        """Send ``event``; ``throttled`` ones are dropped within ``every_s`` of the last one sent.

        ``wait`` blocks until the board has it (a few ms): for events that must not be
        lost when the worker exits right after, such as an epoch's metrics.
        Returns whether it was sent.
        """
        if self.board is None:
            return False
        now = time.monotonic()
        if throttled and now - self._last < self.every_s:
            return False
        self._last = now
        try:
            ref = self.board.push.remote(event)
            if wait:
                ray.get(ref, timeout=30)
        except Exception:  # noqa: BLE001 - progress is never worth failing the job
            self.board = None
            return False
        return True

    def add(self, key: str, amount: float) -> None:
        if self.board is None or not amount:
            return
        try:
            self.board.add.remote(key, amount)
        except Exception:  # noqa: BLE001
            self.board = None


class Follower:
    """Driver side: a thread that drains a fresh board and hands its events to ``on_events``.

    Use as a context manager around the work; on exit it drains the board one
    last time, so the final events are never lost, then stops.
    """

    def __init__(self, on_events: Callable[[list[dict], dict[str, float]], None], every_s: float = 0.5):
        self.board = ProgressBoard.options(name=None).remote()
        self.on_events = on_events
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-ner-progress", daemon=True)

    def _drain(self) -> None:
        try:
            events, counts = ray.get(self.board.take.remote(), timeout=30)
        except Exception as exc:  # noqa: BLE001 - the job's own errors are reported by the job
            log.debug("progress board not readable: %s", exc)
            return
        try:
            self.on_events(events, counts)
        except Exception:  # noqa: BLE001 - a drawing bug must not stop the job
            log.exception("progress display failed")

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._drain()

    def __enter__(self) -> "Follower":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        ray.kill(self.board, no_restart=True)
