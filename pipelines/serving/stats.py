"""What a replica counts: requests, errors, latencies and the batch sizes ``@serve.batch`` formed.

``ReplicaStats`` lives in one replica (its event loop only: no locks). ``snapshot`` is the
replica's own ``GET /v1/stats``; ``take_delta`` is what it sends the ``ray-ner serve``
console every second, which ``Window`` turns into the status line across all replicas.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class ReplicaStats:
    def __init__(self, keep: int = 2000):
        self.started = time.time()
        self.counts = collections.Counter()  # requests, rejected (4xx), failed (5xx), documents, document_errors
        self.batch_sizes: collections.Counter[int] = collections.Counter()  # documents per model call -> calls
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=keep)  # the last `keep` requests
        self._delta_latencies: list[float] = []
        self._sent = collections.Counter()

    def request(self, latency_s: float, status: int, documents: int = 0, document_errors: int = 0) -> None:
        ms = latency_s * 1000
        self.counts["requests"] += 1
        self.counts["rejected" if 400 <= status < 500 else "failed" if status >= 500 else "ok"] += 1
        self.counts["documents"] += documents
        self.counts["document_errors"] += document_errors
        self.latencies_ms.append(ms)
        if len(self._delta_latencies) < 100_000:  # bounded if nobody takes them (no console attached)
            self._delta_latencies.append(ms)

    def batch(self, size: int) -> None:
        self.batch_sizes[size] += 1

    def snapshot(self) -> dict:
        lat = list(self.latencies_ms)
        return {
            **{k: self.counts[k] for k in ("requests", "ok", "rejected", "failed", "documents", "document_errors")},
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "latency_ms": {f"p{q}": percentile(lat, q) for q in (50, 95, 99)} | {"over_requests": len(lat)},
            "uptime_s": round(time.time() - self.started, 1),
        }

    def take_delta(self) -> dict:
        """Counts since the last call, and the latencies of the requests in between."""
        delta = {k: v - self._sent[k] for k, v in self.counts.items()}
        self._sent = collections.Counter(self.counts)
        latencies, self._delta_latencies = self._delta_latencies, []
        return {"counts": delta, "latencies_ms": latencies}


class Window:
    """Requests/s and latency percentiles over the last ``seconds``, from every replica's deltas."""

    def __init__(self, seconds: float = 10.0):
        self.seconds = seconds
        self.samples: collections.deque[tuple[float, float]] = collections.deque()  # (arrival, latency ms)
        self.totals = collections.Counter()
        self.started = time.monotonic()

    def add(self, delta: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.totals.update(delta.get("counts", {}))
        self.samples.extend((now, ms) for ms in delta.get("latencies_ms", ()))

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        while self.samples and self.samples[0][0] < now - self.seconds:
            self.samples.popleft()
        span = min(self.seconds, max(now - self.started, 1e-9))
        lat = [ms for _, ms in self.samples]
        rate = len(lat) / span
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        latency = f"p50 {p50:.0f} ms  p99 {p99:.0f} ms" if lat else "p50 -  p99 -"
        t = self.totals
        errors = t["failed"] + t["document_errors"]
        return f"{rate:,.1f} requests/s  {latency}  {t['requests']:,} requests, {errors:,} errors, {t['rejected']:,} refused (4xx)"
