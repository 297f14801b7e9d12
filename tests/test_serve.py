"""Online tagging (pipelines.serving): request checks and counters, then a real Serve app over HTTP.

The first tests are plain Python (what a request may be, what a replica counts). The
rest run the real application on the session's Ray cluster, on a free port of
127.0.0.1, with one replica of the tiny tagger on half a CPU, and talk to it with
urllib: every shape of request, every kind of bad one, batching across concurrent
requests, and the same labels as ``jobs.tag``.
"""

from __future__ import annotations

import json

import pytest

from pipelines.serving.config import ServeConfig
from pipelines.serving.requests import Limits, RequestError, parse_body
from pipelines.serving.stats import ReplicaStats, Window, percentile

LIMITS = Limits(max_chars=50, max_docs=3, max_body_bytes=4096)


def _refusal(body) -> tuple[int, str | None, str]:
    with pytest.raises(RequestError) as info:
        parse_body(body if isinstance(body, bytes) else json.dumps(body).encode(), LIMITS)
    return info.value.status, info.value.field, info.value.reason


def test_each_request_shape_becomes_documents():
    one = parse_body(b'{"text": "Alice met Bob."}', LIMITS)
    assert [d.words for d in one.documents] == [["Alice", "met", "Bob", "."]] and one.min_score is None
    assert one.documents[0].text == "Alice met Bob."  # character offsets for raw text
    many = parse_body(json.dumps({"texts": ["a b", ""], "min_score": 0.5}).encode(), LIMITS)
    assert [d.words for d in many.documents] == [["a", "b"], []] and many.min_score == 0.5
    words = parse_body(json.dumps({"tokens": [["New", "York"], []], "min_score": 1}).encode(), LIMITS)
    assert [d.words for d in words.documents] == [["New", "York"], []] and words.documents[0].text is None


BAD = [
    (b"not json", 400, None, "the body is not JSON"),
    (b"\xff\xfe", 400, None, "the body is not JSON"),
    (b"[" * 100_000, 413, None, "more than this server's limit of 4,096"),
    ([1, 2], 422, None, "the body is a JSON list"),
    ({}, 422, None, "expected exactly one of text, texts, tokens, got none"),
    ({"text": "a", "texts": ["b"]}, 422, None, "got text, texts"),
    ({"txt": "a"}, 422, "txt", "unknown field"),
    ({"text": None}, 422, "text", "is null"),
    ({"text": 7}, 422, "text", "is int, expected a string"),
    ({"texts": "a"}, 422, "texts", "is str, expected a list"),
    ({"texts": []}, 422, "texts", "is an empty list"),
    ({"texts": ["a", ["b"]]}, 422, "texts[1]", "is list, expected a string"),
    ({"tokens": [["a"], "b c"]}, 422, "tokens[1]", "is str, expected a list of strings"),
    ({"tokens": [["a", 3]]}, 422, "tokens[0][1]", "is int, expected a string"),
    ({"tokens": []}, 422, "tokens", "is an empty list"),
    ({"text": "a", "min_score": "high"}, 422, "min_score", "expected a number between 0 and 1"),
    ({"text": "a", "min_score": True}, 422, "min_score", "expected a number between 0 and 1"),
    ({"text": "a", "min_score": 1.5}, 422, "min_score", "expected a number between 0 and 1"),
    (b'{"text": "a", "min_score": NaN}', 422, "min_score", "expected a number between 0 and 1"),
    ({"text": "x" * 51}, 413, "text", "has 51 characters, more than this server's limit of 50"),
    ({"tokens": [["x" * 25, "y" * 25]]}, 413, "tokens[0]", "has 51 characters"),  # words joined by spaces
    ({"texts": ["a"] * 4}, 413, "texts", "has 4 documents, more than this server's limit of 3"),
]


@pytest.mark.parametrize(("body", "status", "field", "reason"), BAD, ids=[str(b[0])[:40] for b in BAD])
def test_bad_requests_name_the_field_and_the_reason(body, status, field, reason):
    got_status, got_field, got_reason = _refusal(body)
    assert (got_status, got_field) == (status, field) and reason in got_reason


def test_settings_are_checked_once():
    assert ServeConfig(model="m", replicas="2-4").replica_range() == (2, 4)
    assert ServeConfig(model="m", replicas=3).replica_range() == (3, 3)  # an int from YAML
    assert ServeConfig(model="m", cpus_per_replica=0.5).threads == 1
    for bad in ({"replicas": "4-2"}, {"replicas": "x"}, {"max_batch_size": 0}, {"min_score": 2}, {"mixed_precision": "fp16"}, {"port": 0}, {"runtime": "onnx", "gpus_per_replica": 1}):
        with pytest.raises(ValueError):
            ServeConfig(model="m", **bad)


def test_replica_counts_batches_and_latency_percentiles():
    stats = ReplicaStats()
    for ms in range(1, 101):
        stats.request(ms / 1000, 200, documents=2)
    stats.request(0.001, 422)
    stats.request(0.002, 200, documents=3, document_errors=1)
    for size in (1, 8, 8):
        stats.batch(size)
    snap = stats.snapshot()
    assert (snap["requests"], snap["ok"], snap["rejected"], snap["documents"], snap["document_errors"]) == (102, 101, 1, 203, 1)
    assert snap["batch_sizes"] == {"1": 1, "8": 2}
    assert snap["latency_ms"]["p50"] == pytest.approx(50, abs=1) and snap["latency_ms"]["p99"] == pytest.approx(99, abs=1)
    delta = stats.take_delta()
    assert delta["counts"]["requests"] == 102 and len(delta["latencies_ms"]) == 102
    assert stats.take_delta() == {"counts": {k: 0 for k in delta["counts"]}, "latencies_ms": []}
    assert percentile([], 50) is None and percentile([3.0], 99) == 3.0


def test_console_window_rates_over_the_last_seconds():
    window = Window(seconds=10)
    window.started = 0.0
    window.add({"counts": {"requests": 20, "ok": 19, "rejected": 1}, "latencies_ms": [10.0] * 19 + [90.0]}, now=5.0)
    line = window.line(now=10.0)
    assert line.startswith("2.0 requests/s  p50 10 ms  p99 90 ms") and "20 requests, 0 errors, 1 refused (4xx)" in line
    assert window.line(now=30.0).startswith("0.0 requests/s  p50 -")  # idle: the window empties, totals stay
