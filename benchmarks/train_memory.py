"""jobs.train's memory at 1x and 10x the training data, a worker's speed against a bare loop,
and how long dev scoring holds the ranks (issue 25).

    .venv/bin/python benchmarks/train_memory.py                     # all three parts
    .venv/bin/python benchmarks/train_memory.py --only memory --scale 10
    .venv/bin/python benchmarks/train_memory.py --only memory --memory-epochs 1 --checkout /tmp/before   # the code before

Data: CoNLL-2003 ``train.txt`` and ``dev.txt`` from ../shared/data (never copied into the
repo); the scaled training file is ``train.txt`` written ``--scale`` times into ``--out``.
Every job is ``python -m jobs.train`` in a subprocess on its own local Ray, as a user runs it.

- **memory**: the tiny BERT of tests/conftest.py as an encoder-only tagger (so what grows is
  the data path, not the model), 2 workers x 0.5 CPU, no dev set, the same ``--max-steps``
  at 1x and at ``--scale`` x the data. Peak of the summed PSS of the job's whole process
  tree (driver, Ray's daemons, workers; ``tag_vs_pipeline.tree_pss``), sampled every second.
- **speed**: the packaged MiniLM encoder-only tagger, the default workers (on 2 cores one,
  1.5 CPUs, 2 torch threads), ``--speed-steps`` steps on the first ``--speed-sentences``
  sentences. The job's tokens/s per worker (metrics.json: tokens over the epochs' training
  time, the shard's streaming included) against a bare loop in one process: the same model,
  windows, length-grouped batches (``pipelines.training.batches``), optimizer and threads, and
  the same clock (first batch to last step). Alternating, ``--rounds`` times each.
- **dev**: 2 workers x 0.5 CPU, MiniLM, one epoch of 2,000 sentences, all of CoNLL dev:
  ``eval_time_s`` (rank 0's dev scoring) and ``eval_wait_s`` (the longest a rank waited
  for the others at the gather). ``--checkout`` runs another tree's jobs.train, e.g. the code
  before this change (``git archive``d to a folder), where rank 0 scored all of dev alone and
  the other rank waited all of ``eval_time_s``.
Writes ``<out>/train_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tag_vs_pipeline import child_env, run_measured, tree_pss  # noqa: E402  (same PSS sampling as the tagging benchmarks)

BARE_LOOP = r"""
import json, sys, time
import numpy as np, pyarrow as pa, torch
from transformers import get_linear_schedule_with_warmup
from ner_core.alignment import encode_batch
from ner_core.conll import parse_conll_text
from ner_core.labels import LabelMap, convert_scheme, labels_from_sequences
from ner_core.tagger import build_tagger, load_tokenizer, resolve_model_path
from pipelines.training.batches import length_grouped_batches
from pipelines.training.config import POOL_WINDOWS
path, steps, threads, batch_size, max_length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(42)
sentences = parse_conll_text(open(path).read(), path, 0, -1)
tags = [convert_scheme(s.tags, "IOB1", "IOB2") for s in sentences]
labels = LabelMap(tuple(labels_from_sequences(tags, "IOB2")))
tokenizer = load_tokenizer("minilm")
windows = [w for wins in encode_batch(tokenizer, [s.tokens for s in sentences], [labels.encode(t) for t in tags], max_length=max_length, stride=32) for w in wins]
table = pa.table({"input_ids": [w.input_ids for w in windows], "labels": [w.labels for w in windows]})
model = build_tagger("encoder", resolve_model_path("minilm"), labels=labels, vocab_size=len(tokenizer))
no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
groups = [{"params": [p for n, p in model.named_parameters() if not any(k in n for k in no_decay)], "weight_decay": 0.01},
          {"params": [p for n, p in model.named_parameters() if any(k in n for k in no_decay)], "weight_decay": 0.0}]
optimizer = torch.optim.AdamW(groups, lr=1e-4)
scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * steps), steps)
model.train()
pool = max(1, POOL_WINDOWS // batch_size) * batch_size
batches = length_grouped_batches(iter(table.to_batches(1024)), windows=min(len(windows), steps * batch_size), batch_size=batch_size, pool=pool, rng=np.random.default_rng((42, 0, 0)), pad_id=tokenizer.pad_token_id)
t0, tokens = time.perf_counter(), 0
for b in batches:
    inputs = {k: torch.from_numpy(getattr(b, k)) for k in ("input_ids", "attention_mask", "labels")}
    model(**inputs).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step(); scheduler.step(); optimizer.zero_grad(set_to_none=True)
    tokens += b.tokens
print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t0, "tokens_per_s": tokens / (time.perf_counter() - t0)}))
"""


def tiny_bert(out: str) -> str:
    """tests/conftest.py's tiny BERT (hidden 32, 2 layers) with the MiniLM tokenizer beside it."""
    path = os.path.join(out, "tiny-bert")
    if not os.path.exists(os.path.join(path, "config.json")):
        from transformers import AutoTokenizer, BertConfig, BertModel

        from ner_core.tagger import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
        cfg = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
        BertModel(cfg, add_pooling_layer=False).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def write_data(src: str, out: str, name: str, copies: int = 1, sentences: int | None = None) -> str:
    """``src`` written ``copies`` times (or its first ``sentences`` sentences) as ``out/name``."""
    path = os.path.join(out, name)
    text = open(src, encoding="utf-8").read()
    if sentences is not None:
        text = "\n\n".join(text.strip().split("\n\n")[:sentences]) + "\n"
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(copies):
            fh.write(text.rstrip("\n") + "\n\n")
    return path


def run_in(cmd: list[str], env: dict, cwd: str, memory: bool) -> tuple[float, dict | None]:
    """(seconds, peak tree PSS or None) of ``cmd`` run from ``cwd`` (``-m jobs.train`` imports the jobs of the folder it starts in)."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = {"bytes": 0, "by_process": {}} if memory else None
    done = threading.Event()

    def sample():  # every second, as tag_vs_pipeline.run_measured
        while memory and not done.wait(1.0):
            total, kinds = tree_pss(proc.pid)
            if total > peak["bytes"]:
                peak.update(bytes=total, by_process={k: round(v / 2**20) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err[-2000:]}")
    return time.time() - start, peak


def train_job(out: str, name: str, flags: list[str], env: dict, memory: bool = False, cwd: str = ROOT) -> dict:
    output = os.path.join(out, name)
    subprocess.run(["rm", "-rf", output], check=True)
    cmd = [sys.executable, "-m", "jobs.train", "--output", output, "--log-every", "0", "--scheme", "IOB1", *flags]
    secs, peak = run_in(cmd, {**env, "PYTHONPATH": cwd}, cwd, memory)
    metrics = json.load(open(os.path.join(output, "metrics.json")))
    epochs = metrics["epochs"]
    workers = metrics["config"]["num_workers"]
    train_time = sum(e["train_time_s"] for e in epochs)
    return {
        "seconds_total": round(secs, 1), "workers": workers, "steps": epochs[-1].get("step"), "train_tokens": metrics["train_tokens"],
        "tokens_per_s_per_worker": metrics["train_tokens"] / train_time / workers, "windows": epochs[-1].get("train_windows"),
        "eval_time_s": epochs[-1].get("eval_time_s"), "eval_wait_s": epochs[-1].get("eval_wait_s"),
        "train_time_s": train_time, "data_wait_s": sum(e.get("data_wait_s", 0) for e in epochs), "first_batch_s": [e.get("first_batch_s") for e in epochs],
        "peak_tree_pss_mib": peak and round(peak["bytes"] / 2**20), "peak_by_process_mib": peak and peak["by_process"],
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out", "train_memory"))
    ap.add_argument("--only", choices=("all", "memory", "speed", "dev"), default="all")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=60, help="memory runs: optimizer steps at both sizes")
    ap.add_argument("--memory-epochs", type=int, help="memory runs: whole epochs instead of --max-steps (the code before has no --max-steps)")
    ap.add_argument("--speed-sentences", type=int, default=3000)
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--checkout", default=ROOT, help="memory and dev parts: the tree whose jobs.train runs (e.g. a copy of the code before)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = child_env()
    train_src, dev_src = os.path.join(args.data, "train.txt"), os.path.join(args.data, "dev.txt")
    results: dict = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()}

    def show(name: str, value) -> None:
        results[name] = value
        print(name, json.dumps(value), flush=True)

    if args.only in ("all", "memory"):
        tiny = tiny_bert(args.out)
        # the code before has no --max-steps: --memory-epochs runs whole epochs instead, for both
        length = ["--epochs", str(args.memory_epochs)] if args.memory_epochs else ["--max-steps", str(args.max_steps)]
        common = ["--arch", "encoder", "--encoder", tiny, "--batch-size", "32", *length, "--num-workers", "2", "--cpus-per-worker", "0.5"]
        for label, copies in (("1x", 1), (f"{args.scale}x", args.scale)):
            data = write_data(train_src, args.out, f"train-{label}.txt", copies=copies)
            show(f"memory_{label}", train_job(args.out, f"memory-{label}", ["--train", data, *common], env, memory=True, cwd=os.path.abspath(args.checkout)))
        results["peak_pss_scaled_vs_1x"] = round(results[f"memory_{args.scale}x"]["peak_tree_pss_mib"] / results["memory_1x"]["peak_tree_pss_mib"], 3)
        print("peak_pss_scaled_vs_1x", results["peak_pss_scaled_vs_1x"], flush=True)

    if args.only in ("all", "speed"):
        data = write_data(train_src, args.out, "train-speed.txt", sentences=args.speed_sentences)
        flags = ["--train", data, "--arch", "encoder", "--encoder", "minilm", "--batch-size", "32", "--max-steps", str(args.speed_steps)]
        jobs, loops = [], []
        for r in range(args.rounds):
            jobs.append(train_job(args.out, "speed-job", flags, env))
            print("job", json.dumps(jobs[-1]), flush=True)
            _, _, out = run_measured([sys.executable, "-c", BARE_LOOP, data, str(args.speed_steps), str(2), "32", "128"], env)
            loops.append(json.loads(out.strip().splitlines()[-1]))
            print("bare loop", json.dumps(loops[-1]), flush=True)
        job_rate = statistics.median(j["tokens_per_s_per_worker"] for j in jobs)
        loop_rate = statistics.median(x["tokens_per_s"] for x in loops)
        show("speed", {"job_per_worker": [round(j["tokens_per_s_per_worker"]) for j in jobs], "bare_loop": [round(x["tokens_per_s"]) for x in loops], "job_vs_loop": round(job_rate / loop_rate, 3)})

    if args.only in ("all", "dev"):
        data = write_data(train_src, args.out, "train-dev-part.txt", sentences=2000)
        flags = ["--train", data, "--dev", dev_src, "--arch", "encoder", "--encoder", "minilm", "--batch-size", "32", "--epochs", "1", "--num-workers", "2", "--cpus-per-worker", "0.5"]
        show("dev", {"checkout": os.path.abspath(args.checkout), **train_job(args.out, "dev", flags, env, cwd=os.path.abspath(args.checkout))})

    results["load_avg_at_end"] = os.getloadavg()
    with open(os.path.join(args.out, "train_memory.json"), "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
