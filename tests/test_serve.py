"""Online tagging (pipelines.serving): request checks and counters, then a real Serve app over HTTP.

The first tests are plain Python (what a request may be, what a replica counts). The
rest run the real application on the session's Ray cluster, on a free port of
127.0.0.1, with one replica of the tiny tagger on half a CPU, and talk to it with
urllib: every shape of request, every kind of bad one, batching across concurrent
requests, and the same labels as ``jobs.tag``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import types
import urllib.error
import urllib.request

import pytest
from conftest import CONLL_LABELS, _free_port

from ner_core.labels import is_valid
from ner_core.sample_data import make_texts
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


def test_flags_and_yaml_make_the_same_settings(tmp_path, capsys):
    from jobs import serve as serve_job
    from jobs.cli import ConfigError, config_from_args

    (tmp_path / "serve.yaml").write_text("model: runs/conll\nreplicas: 1-3\nmax-batch-size: 16\n")
    cfg = config_from_args(ServeConfig, ["--config", str(tmp_path / "serve.yaml"), "--max-batch-size", "8", "--cpus-per-replica", "0.5"], "")
    assert (cfg.model, cfg.replica_range(), cfg.max_batch_size, cfg.cpus_per_replica, cfg.host) == ("runs/conll", (1, 3), 8, 0.5, "127.0.0.1")
    with pytest.raises(ConfigError, match="--replicas must be N or MIN-MAX"):
        config_from_args(ServeConfig, ["--model", "m", "--replicas", "0"], "")
    with pytest.raises(SystemExit) as exit_info:
        serve_job.run_main(serve_job.main, [])
    assert exit_info.value.code == 2 and capsys.readouterr().err.strip() == "error: --model is required"


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


# --- the application on the session's Ray cluster ---------------------------------------

LONG_TEXT = " ".join(f"Alice{i} visited Paris with Bob." for i in range(60))  # ~300 words, far beyond 24 subwords
WINDOWS = {"max_length": 24, "stride": 6}  # the same small windows as tests/test_tag_job.py, so long texts are cut


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_tagger):
    """The real application, one replica on half a CPU; Serve is shut down after the module (its CPUs back)."""
    from ray import serve

    from pipelines.serving.app import tagger_app

    port = _free_port()
    # a long batch wait, so that concurrent requests certainly meet in one batch (a lone one does not wait)
    cfg = ServeConfig(model=tiny_tagger, port=port, cpus_per_replica=0.5, max_batch_size=16, batch_wait_ms=2000, max_chars=5000, max_docs=16, **WINDOWS)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(tagger_app(cfg), name="ray-ner-test", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _call(url: str, body=None, method: str | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _check_document(doc: dict, text: str | None = None) -> None:
    assert len(doc["tokens"]) == len(doc["labels"]) == len(doc["scores"]) and is_valid(doc["labels"], "IOB2")
    for ent in doc["entities"]:
        assert set(ent) == {"type", "start", "end", "text", "score"}
        assert ent["text"] == (text[ent["start"] : ent["end"]] if text is not None else " ".join(doc["tokens"][ent["start"] : ent["end"]]))


@pytest.mark.slow
def test_health_and_model_identity(server, tiny_tagger):
    from pipelines.tagging.model import model_identity

    assert _call(f"{server}/healthz") == (200, {"status": "ok"})
    status, info = _call(f"{server}/v1/model")
    assert status == 200 and info["identity"] == model_identity(tiny_tagger) and info["labels"] == CONLL_LABELS
    assert info["settings"]["max_length"] == 24 and info["batching"] == {"max_batch_size": 16, "batch_wait_ms": 2000}


@pytest.mark.slow
def test_every_request_shape_over_http(server):
    status, out = _call(f"{server}/v1/tag", {"text": "Alice Smith flew to Paris."})
    assert status == 200 and len(out["documents"]) == 1
    assert out["documents"][0]["tokens"] == ["Alice", "Smith", "flew", "to", "Paris", "."]
    _check_document(out["documents"][0], "Alice Smith flew to Paris.")

    texts = ["Bob met Carol in Berlin.", LONG_TEXT, "", "Café Zürich ☕ 東京"]
    status, out = _call(f"{server}/v1/tag", {"texts": texts})
    assert status == 200 and len(out["documents"]) == len(texts)  # one per input, in input order
    for doc, text in zip(out["documents"], texts):
        _check_document(doc, text)
    assert len(out["documents"][1]["tokens"]) > 250 and out["documents"][2] == {"tokens": [], "labels": [], "scores": [], "entities": []}

    tokens = [["New", "York", "is", "big"], ["Bob"]]
    status, out = _call(f"{server}/v1/tag", {"tokens": tokens})
    assert status == 200 and [d["tokens"] for d in out["documents"]] == tokens
    for doc in out["documents"]:
        _check_document(doc)  # token indices [start, end)


@pytest.mark.slow
def test_min_score_of_a_request_overrides_the_default(server):
    texts = make_texts(8, seed=2)
    _, everything = _call(f"{server}/v1/tag", {"texts": texts})
    assert sum(len(d["entities"]) for d in everything["documents"]) > 0  # the untrained tagger finds some
    _, strict = _call(f"{server}/v1/tag", {"texts": texts, "min_score": 1.0})
    for doc in strict["documents"]:  # an untrained tagger is never sure: nothing is left
        assert doc["entities"] == [] and set(doc["labels"]) <= {"O"}


@pytest.mark.slow
def test_bad_requests_get_a_4xx_naming_the_field_and_the_server_stays_up(server):
    cases = [
        (b"{not json", 400, None),
        (b"[" * 100_000, 400, None),  # nested too deep for the parser: still a 400, not a 500
        (b'{"text": "caf\xe9"}', 400, None),  # not UTF-8
        ({"texts": "one string"}, 422, "texts"),
        ({"texts": []}, 422, "texts"),
        ({"tokens": [["a", None]]}, 422, "tokens[0][1]"),
        ({"text": "a", "extra": 1}, 422, "extra"),
        ({"text": "x " * 2501}, 413, "text"),
        ({"texts": ["a"] * 17}, 413, "texts"),
    ]
    for body, status, field in cases:
        got, out = _call(f"{server}/v1/tag", body)
        assert (got, out["error"]["field"]) == (status, field), (body, out)
        assert out["error"]["reason"]
    assert _call(f"{server}/v1/tag", method="GET")[0] == 405
    assert _call(f"{server}/v1/nothing-here")[0] == 404
    assert _call(f"{server}/healthz")[0] == 200
    assert _call(f"{server}/v1/tag", {"text": "still here"})[0] == 200


@pytest.mark.slow
def test_a_document_that_breaks_the_model_fails_alone_over_http(server):
    texts = ["Bob went home.", "a lone surrogate \ud800 breaks the tokenizer", "Ann met Tom in Oslo."]
    status, out = _call(f"{server}/v1/tag", {"texts": texts})
    assert status == 200 and out["documents"][1]["error"].startswith("tagging failed: ")
    for i in (0, 2):
        _check_document(out["documents"][i], texts[i])
    assert _call(f"{server}/healthz")[0] == 200  # one bad document is not a broken model


@pytest.mark.slow
def test_a_request_alone_starts_its_model_call_without_the_batch_wait(server):
    started = time.perf_counter()
    status, out = _call(f"{server}/v1/tag", {"texts": ["Ada Lovelace lived in London.", "Paris is in France."]})
    assert status == 200 and len(out["documents"]) == 2
    assert time.perf_counter() - started < 1.0  # the server's batch wait is 2 s: it applies only with company


@pytest.mark.slow
def test_concurrent_requests_meet_in_one_batch(server):
    before = _call(f"{server}/v1/stats")[1]["batch_sizes"]
    start, results = threading.Barrier(12), []

    def one(i: int) -> None:
        start.wait()
        results.append(_call(f"{server}/v1/tag", {"text": f"Person{i} visited Rome."}))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [s for s, _ in results] == [200] * 12
    after = _call(f"{server}/v1/stats")[1]
    new = {int(k): v - before.get(k, 0) for k, v in after["batch_sizes"].items() if v > before.get(k, 0)}
    assert sum(size * n for size, n in new.items()) == 12 and max(new) > 1, new  # batched, not one by one
    assert after["failed"] == 0 and after["latency_ms"]["p99"] > 0


@pytest.mark.slow
def test_same_labels_entities_and_scores_as_jobs_tag(server, tiny_tagger, tmp_path):
    from jobs import tag as tag_job

    texts = make_texts(14, seed=8) + [LONG_TEXT, "Café Zürich ☕ 東京 e\u0301te\u0301"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"n": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)))
    argv = ["--model", tiny_tagger, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--output-format", "jsonl",
            "--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--max-length", "24", "--stride", "6"]  # fmt: skip
    assert tag_job.main(argv) == 0
    rows = {r["n"]: r for p in (tmp_path / "out").glob("*.jsonl") for r in map(json.loads, p.read_text().splitlines())}
    # all 16 in one request: the replica's model call then holds the same documents as the
    # job's actor call, so the forward passes see the same batches and the scores match exactly
    status, out = _call(f"{server}/v1/tag", {"texts": texts})
    assert status == 200
    for i, doc in enumerate(out["documents"]):
        assert {k: rows[i][k] for k in ("tokens", "labels", "scores", "entities")} == doc, texts[i]


def test_a_document_that_breaks_the_model_fails_alone(tiny_tagger):
    """The replica's model call, on a model that fails on one document: the others are still tagged."""
    import torch

    from ner_core.documents import document_from_tokens
    from ner_core.predictor import Predictor
    from pipelines.serving.app import TaggerServer

    predictor = Predictor.load(tiny_tagger, device="cpu")
    bad_id = predictor.tokenizer.convert_tokens_to_ids("bad")

    class Fragile(torch.nn.Module):  # the tagger, except that it cannot read the word "bad"
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask):
            if (input_ids == bad_id).any():
                raise ValueError("cannot tag this")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    predictor.model = Fragile(predictor.model)
    replica = types.SimpleNamespace(predictor=predictor, healthy=True)
    cls = TaggerServer.func_or_class
    doc = lambda *words: document_from_tokens({"w": list(words)}, "w")  # noqa: E731
    items = [(doc("a", "b"), None), (doc("bad"), None), (doc("c"), None), (doc("d"), 0.5)]  # two requests' documents
    out = cls._tag_isolated(replica, items)
    assert [r.error for r in out] == [None, "tagging failed: ValueError: cannot tag this", None, None]
    assert [r.tokens for r in out] == [["a", "b"], ["bad"], ["c"], ["d"]] and replica.healthy
    assert out[1].to_dict() == {"error": "tagging failed: ValueError: cannot tag this"}
    cls._tag_isolated(replica, [(doc("bad"), None)])
    assert not replica.healthy  # every document failed: /healthz says so, and Serve's check replaces the replica
    assert asyncio.run(cls.healthz(replica)).status_code == 503
    with pytest.raises(RuntimeError):
        cls.check_health(replica)


def test_the_serve_config_file_builds_the_same_app(tiny_tagger):
    import importlib

    import yaml
    from ray.serve import Application

    spec = yaml.safe_load(open("jobs/configs/serve.yaml"))
    app_spec = spec["applications"][0]
    module, _, name = app_spec["import_path"].partition(":")
    builder = getattr(importlib.import_module(module), name)
    assert isinstance(builder({**app_spec["args"], "model": tiny_tagger}), Application)
    assert spec["http_options"]["host"] == "127.0.0.1"
