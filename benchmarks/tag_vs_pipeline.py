"""jobs.tag against HuggingFace ``pipeline("token-classification")``: words/s and peak memory.

    .venv/bin/python benchmarks/tag_vs_pipeline.py --model runs/conll-minilm-encoder --sentences 50000

Corpus: CoNLL-2003 sentences (train, dev and test files, read from
../shared/data, never copied into the repo) joined back into raw text with
single spaces, cycled up to ``--sentences``, one JSON object per line in
shards of 10,000 rows. Both contenders tag the same texts with the same
model on this machine in this run: the pipeline in one process at a few batch
sizes (the best is kept), jobs.tag as a subprocess starting its own local
Ray. Peak memory is sampled every 0.2 s as the summed RSS of the whole
process tree (driver, Ray's daemons, workers; shared pages counted in each
process, so an upper bound), for jobs.tag on the corpus and on one
``--scale`` times smaller/larger.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def conll_texts(data_dir: str) -> list[str]:
    from ner_core.conll import read_conll

    texts = []
    for split in ("train", "dev", "test"):
        for sentence in read_conll(os.path.join(data_dir, f"{split}.txt")):
            if sentence.tokens:
                texts.append(" ".join(sentence.tokens))
    return texts


def write_corpus(texts: list[str], n: int, folder: str, shard: int = 10_000) -> None:
    os.makedirs(folder, exist_ok=True)
    rows = itertools.islice(itertools.cycle(texts), n)
    for i in itertools.count():
        chunk = list(itertools.islice(rows, shard))
        if not chunk:
            break
        with open(os.path.join(folder, f"part-{i:05d}.jsonl"), "w") as fh:
            for j, t in enumerate(chunk):
                fh.write(json.dumps({"id": i * shard + j, "text": t}) + "\n")


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_measured(cmd: list[str], env: dict) -> tuple[float, int, str]:
    """(seconds, peak tree RSS bytes, stdout) of a subprocess."""
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.wait(0.2):
            peak = max(peak, tree_rss(proc.pid))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return time.time() - start, peak, out


PIPELINE_CHILD = r"""
import json, sys, time, glob, resource
import torch
from transformers import pipeline, AutoTokenizer
from ner_core.tagger import load_tagger
model_dir, corpus, batch_size, limit, threads, dtype = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(threads)
texts = [json.loads(l)["text"] for p in sorted(glob.glob(corpus + "/*.jsonl")) for l in open(p)][:limit]
model = load_tagger(model_dir)
if dtype == "bf16":
    model = model.to(torch.bfloat16)
nlp = pipeline("token-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), device=-1, aggregation_strategy="simple")
nlp(texts[:8], batch_size=8)
t = time.time()
n_ents = sum(len(r) for r in nlp(texts, batch_size=batch_size))
dt = time.time() - t
words = sum(len(s.split()) for s in texts)
print(json.dumps({"batch_size": batch_size, "dtype": dtype, "sentences": len(texts), "words": words, "seconds": dt, "words_per_s": words / dt, "entities": n_ents, "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/conll-minilm-encoder")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003"))
    ap.add_argument("--sentences", type=int, default=50_000)
    ap.add_argument("--scale", type=float, default=10.0, help="second corpus for the memory comparison: sentences x scale")
    ap.add_argument("--pipeline-batch-sizes", default="8,32,64")
    ap.add_argument("--pipeline-sample", type=int, default=5000, help="sentences per batch-size trial (the best then runs on the full corpus)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    ap.add_argument("--tag-args", default="--actors 1 --cpus-per-actor 1 --torch-threads 2 --max-length 128")
    args = ap.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    texts = conll_texts(args.data)
    sizes = {"main": args.sentences, "scaled": int(args.sentences * args.scale)}
    for name, n in sizes.items():
        write_corpus(texts, n, os.path.join(args.out, f"corpus-{n}"))
    main_corpus = os.path.join(args.out, f"corpus-{args.sentences}")
    results: dict = {"sentences": sizes, "distinct_sentences": len(texts), "cpus": os.cpu_count()}

    trials = []
    for bs in [int(b) for b in args.pipeline_batch_sizes.split(",")]:
        _, _, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, main_corpus, str(bs), str(args.pipeline_sample), "2", "fp32"], env)
        trials.append(json.loads(out.strip().splitlines()[-1]))
        print("pipeline trial", trials[-1], flush=True)
    best = max(trials, key=lambda r: r["words_per_s"])
    secs, peak, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, main_corpus, str(best["batch_size"]), str(args.sentences), "2", "fp32"], env)
    pipe = json.loads(out.strip().splitlines()[-1])
    pipe["peak_tree_rss"] = peak
    # the pipeline in bf16 too (weights cast), at its best batch size, on the trial sample:
    # so the jobs.tag bf16 figure can also be read against a bf16 pipeline
    _, _, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, main_corpus, str(best["batch_size"]), str(args.pipeline_sample), "2", "bf16"], env)
    results["pipeline_bf16_sample"] = json.loads(out.strip().splitlines()[-1])
    print("pipeline bf16 sample", results["pipeline_bf16_sample"], flush=True)
    results["pipeline_trials"] = trials
    results["pipeline"] = pipe
    print("pipeline full", pipe, flush=True)

    # jobs.tag in fp32 (the pipeline's precision) and bf16 autocast on the main corpus;
    # bf16 on the scaled corpus for the memory comparison
    for name, n, precision in (("main_fp32", sizes["main"], "none"), ("main", sizes["main"], "bf16"), ("scaled", sizes["scaled"], "bf16")):
        out_dir = os.path.join(args.out, f"tagged-{name}")
        cmd = [sys.executable, "-m", "jobs.tag", "--model", args.model, "--input", os.path.join(args.out, f"corpus-{n}"), "--output", out_dir, "--overwrite", "--mixed-precision", precision, *args.tag_args.split()]
        secs, peak, out = run_measured(cmd, env)
        manifest = json.load(open(os.path.join(out_dir, "_manifest.json")))
        run = manifest["this_run"]
        # words as the pipeline counts them (whitespace tokens of the corpus), over the job's own wall time
        words = sum(len(t.split()) for t in itertools.islice(itertools.cycle(texts), n))
        results[f"jobs_tag_{name}"] = {"sentences": n, "mixed_precision": precision, "seconds_total": secs, "job_seconds": run["seconds"], "words": words, "words_per_s": words / run["seconds"], "job_word_splits": run["words"], "rows_written": manifest["rows_written"], "rows_failed": manifest["rows_failed"], "peak_tree_rss": peak}
        print(f"jobs.tag {name}", results[f"jobs_tag_{name}"], flush=True)

    main_run = results["jobs_tag_main"]
    results["speedup_vs_best_pipeline"] = main_run["words_per_s"] / pipe["words_per_s"]
    results["speedup_fp32_vs_best_pipeline"] = results["jobs_tag_main_fp32"]["words_per_s"] / pipe["words_per_s"]
    results["speedup_bf16_vs_pipeline_bf16_sample"] = main_run["words_per_s"] / results["pipeline_bf16_sample"]["words_per_s"]
    results["peak_memory_ratio_scaled_vs_main"] = results["jobs_tag_scaled"]["peak_tree_rss"] / main_run["peak_tree_rss"]
    print(json.dumps(results, indent=2))
    with open(os.path.join(args.out, "tag_vs_pipeline.json"), "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
