"""jobs.tag against its peer (HF ``pipeline``) and its limit (a bare forward loop): words/s and memory.

    .venv/bin/python benchmarks/tag_vs_pipeline.py --model runs/conll-minilm-encoder-e5 --sentences 20000

Corpus: CoNLL-2003 sentences (train, dev and test, read from ../shared/data, never
copied into the repo) written back as raw text with natural spacing
(``ner_core.text.join_naturally``), shuffled once (fixed seed), cycled up to ``--sentences`` rows, JSONL shards
of 10,000 rows. Every contender tags the same texts with the same model, on this
machine, in this run, each in its own process:

- **pipeline**: ``transformers.pipeline("token-classification")`` (which knows nothing
  of case markers: it reads fewer tokens and tags worse with a model trained with them) at each of
  ``--pipeline-batch-sizes`` on a sample; the best runs on the whole corpus: 1.00x.
- **bare loop**: the limit. Files read, words split (the same splitter as jobs.tag),
  fast tokenizer (with the model's case-marker tokens, so the model reads the same
  tokens as in jobs.tag), length-sorted batches of 64 windows, forward, argmax, labels
  back on words. One process, no Ray, no output written. Timed from the first file read
  to the last label (the model loaded before the clock starts); its start-up (importing
  torch and transformers, loading the model) is timed apart, and ``--only loop-vs-job``
  also prints the ratio with it on the loop's clock, as the actor's is on jobs.tag's.
- **jobs.tag**: the product, as a user runs it, on its own local Ray. Its rate uses
  the job's own clock (``this_run.seconds``: from the model check to the manifest,
  actor start-up and model loading included; Ray's start before it is printed
  apart as ``seconds_total``).

Each precision's jobs.tag is read against the bare loop at the same precision.
``--only floor`` times the bare loop and jobs.tag, alternating, on a model too small to
cost anything (``floor_model``): what is left is what the job adds around any model
(Ray's actor start, reading, writing, accounting) on this machine. ``--only loop-vs-job
--floor`` adds it to the loop-against-job run and prints, per precision, the best ratio
it leaves: the loop's time over the loop's time plus the floor's.
Memory, in two runs of their own (sampling costs CPU, so the timed runs are not
sampled): the summed PSS (shared pages split between the processes that map them,
so a page is counted once) of the whole process tree (driver, Ray's daemons,
workers), sampled every second; the peak of jobs.tag on ``--memory-sentences`` and
on ``--scale`` times that, at ``--memory-precision``.
Writes ``bench_out/tag_vs_pipeline.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from statistics import median_low

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def conll_texts(data_dir: str) -> list[str]:
    """Every CoNLL-2003 sentence as raw text, in a fixed shuffled order.

    Shuffled so that any prefix is a fair sample: the memory comparison's 1x corpus is
    the first N texts, and in file order those are the first train articles only, shorter
    than the rest (in file order, 10x then met longer sentences, not just more of them).
    """
    import random

    from ner_core.conll import read_conll
    from ner_core.text import join_naturally

    texts = []
    for split in ("train", "dev", "test"):
        for sentence in read_conll(os.path.join(data_dir, f"{split}.txt")):
            if sentence.tokens:
                texts.append(join_naturally(sentence.tokens)[0])
    random.Random(0).shuffle(texts)
    return texts


def corpus_dir(out: str, n: int) -> str:
    return os.path.join(out, f"corpus-mixed-{n}")


def write_corpus(texts: list[str], n: int, folder: str, shard: int = 10_000) -> None:
    if os.path.isdir(folder):
        return
    os.makedirs(folder + ".tmp", exist_ok=True)
    rows = itertools.islice(itertools.cycle(texts), n)
    for i in itertools.count():
        chunk = list(itertools.islice(rows, shard))
        if not chunk:
            break
        with open(os.path.join(folder + ".tmp", f"part-{i:05d}.jsonl"), "w") as fh:
            for j, t in enumerate(chunk):
                fh.write(json.dumps({"id": i * shard + j, "text": t}) + "\n")
    os.rename(folder + ".tmp", folder)


def child_env() -> dict[str, str]:
    """The environment of every contender: offline hub, one tokenizer thread, this checkout, a local Ray."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": ROOT}
    env.pop("RAY_ADDRESS", None)
    return env


def jobs_tag_command(model: str, corpus: str, out: str, max_length: int, threads: int | str, flags: list[str]) -> list[str]:
    """The ``jobs.tag`` command line every benchmark runs (a fresh output each time)."""
    return [sys.executable, "-m", "jobs.tag", "--model", model, "--input", corpus, "--output", out, "--overwrite", "true",
            "--max-length", str(max_length), "--torch-threads", str(threads), *flags]  # fmt: skip


def precision_flags(precision: str) -> list[str]:
    """jobs.tag's ``--mixed-precision`` for a benchmark precision name (fp32 is ``none`` there)."""
    return ["--mixed-precision", "none" if precision == "fp32" else precision]


def process_kind(p) -> str:
    """A process's title: ``ray::TagActor``-style for Ray workers, else its name (``raylet``, ``python``...)."""
    cmd = p.cmdline()
    if cmd and cmd[0].startswith("ray::"):
        return cmd[0].split()[0]
    return p.name() or "?"


def tree_pss(pid: int) -> tuple[int, dict[str, int]]:
    """Summed PSS of a process and all its descendants (bytes), and its split by process kind.

    The kind is the process title (``ray::TagActor``, ``raylet``, ``python`` for the
    driver...), so a peak can be traced to the processes that make it.
    """
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, {}
    total, kinds = 0, {}
    for p in procs:
        try:
            pss = p.memory_full_info().pss
            kind = process_kind(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += pss
        kinds[kind] = kinds.get(kind, 0) + pss
    return total, kinds


def run_measured(cmd: list[str], env: dict, memory: bool = False, cwd: str = ROOT) -> tuple[float, dict | None, str]:
    """(seconds, peak tree PSS {"bytes", "by_process" (MiB)} or None, stdout) of a subprocess.

    PSS is sampled only when ``memory``: reading every process's smaps costs CPU (about a
    third of a core for a Ray job's dozen processes), which a timed run must not pay.
    """
    start = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=cwd)
    peak = {"bytes": 0, "by_process": {}} if memory else None
    done = threading.Event()

    def sample():
        while memory and not done.wait(1.0):
            total, kinds = tree_pss(proc.pid)
            if total > peak["bytes"]:
                peak.update(bytes=total, by_process={k: round(v / 2**20) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])})

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return time.time() - start, peak, out


PIPELINE_CHILD = r"""
import json, sys, time, glob
import torch
from transformers import pipeline
from ner_core.tagger import load_tagger, load_tokenizer
from ner_core.text import split_words
model_dir, corpus, batch_size, limit, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
texts = [json.loads(l)["text"] for p in sorted(glob.glob(corpus + "/*.jsonl")) for l in open(p)][:limit]
nlp = pipeline("token-classification", model=load_tagger(model_dir), tokenizer=load_tokenizer(model_dir), device=-1, aggregation_strategy="simple")
nlp(texts[:8], batch_size=8)
t = time.time()
n_ents = sum(len(r) for r in nlp(texts, batch_size=batch_size))
dt = time.time() - t
words = sum(len(split_words(s)) for s in texts)
print(json.dumps({"batch_size": batch_size, "sentences": len(texts), "words": words, "seconds": dt, "words_per_s": words / dt, "entities": n_ents}))
"""

BARE_LOOP_CHILD = r"""
import time
t_start = time.time()  # the loop's start-up: torch, transformers, the model (jobs.tag's clock has its actor's)
import json, sys, glob
import torch
from ner_core.tagger import load_tagger, load_tokenizer
from ner_core.text import split_words
from ner_core.casing import MARKERS, case_marker_ids, word_case
from ner_core.precision import for_inference
model_dir, corpus, threads, precision, max_length = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
model, tok = load_tagger(model_dir).eval(), load_tokenizer(model_dir)
# the same precision as jobs.tag's actors: bf16 on CPU casts the weights once (ner_core.precision)
model, dtype = for_inference(model, "bf16" if precision == "bf16" else "none", "cpu")
autocast = torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)
t = time.time()
startup = t - t_start
docs = [[w.text for w in split_words(json.loads(l)["text"])] for p in sorted(glob.glob(corpus + "/*.jsonl")) for l in open(p)]
if case_marker_ids(tok):  # the model reads a case marker before capitalised words: feed it the same tokens as jobs.tag
    docs_in = [[t for w in d for t in ((word_case(w), w) if word_case(w) else (w,))] for d in docs]
else:
    docs_in = docs
enc = tok(docs_in, is_split_into_words=True, truncation=True, max_length=max_length)
order = sorted(range(len(docs)), key=lambda i: len(enc["input_ids"][i]))
labels = [None] * len(docs)
with torch.inference_mode(), autocast:
    for s in range(0, len(order), 64):
        idx = order[s:s + 64]
        width = max(len(enc["input_ids"][i]) for i in idx)
        ids = torch.zeros((len(idx), width), dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            row = enc["input_ids"][i]
            ids[r, :len(row)] = torch.tensor(row)
            mask[r, :len(row)] = 1
        best = model(input_ids=ids, attention_mask=mask).logits.argmax(-1).tolist()
        for r, i in enumerate(idx):
            seen, out = set(), []
            for pos, w in enumerate(enc.word_ids(i)):
                if w is not None and w not in seen and docs_in[i][w] not in MARKERS:
                    seen.add(w)
                    out.append(model.config.id2label[best[r][pos]])
            labels[i] = out
dt = time.time() - t
words = sum(len(d) for d in docs)
print(json.dumps({"precision": precision, "sentences": len(docs), "words": words, "seconds": dt, "words_per_s": words / dt,
                  "startup_s": startup, "words_per_s_with_startup": words / (dt + startup)}))
"""


def floor_model(model: str, folder: str) -> str:
    """``model``'s tokenizer and labels on one 16-wide layer: its forward pass costs next to nothing.

    Saved the way a trained tagger is (``save_pretrained``), so jobs.tag and the bare loop load
    it as they load ``model``, case markers included. It tags every word ``O`` (random labels
    would make entity spans on every row, which real text does not have).
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertForTokenClassification

    if not os.path.isdir(folder):
        config = AutoConfig.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
        tiny = BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
                          max_position_embeddings=config.max_position_embeddings, id2label=config.id2label, label2id=config.label2id)  # fmt: skip
        floor = BertForTokenClassification(tiny)
        with torch.no_grad():  # every word "O", as most words of real text are: no entity spans to write
            floor.classifier.weight.zero_()
            floor.classifier.bias.zero_()
            floor.classifier.bias[config.label2id.get("O", 0)] = 1.0
        floor.save_pretrained(folder + ".tmp")
        tokenizer.save_pretrained(folder + ".tmp")
        os.rename(folder + ".tmp", folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/conll-minilm-encoder-e5")
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003"))
    ap.add_argument("--sentences", type=int, default=20_000)
    ap.add_argument("--memory-sentences", type=int, help="corpus of the memory comparison (default: --sentences)")
    ap.add_argument("--scale", type=float, default=10.0, help="second corpus for the memory comparison: memory sentences x scale")
    ap.add_argument("--memory-precision", default="fp32", help="precision of the two memory runs: fp32, jobs.tag's default on CPU, or bf16")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of every contender")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--pipeline-batch-sizes", default="8,32,64")
    ap.add_argument("--pipeline-sample", type=int, default=5000, help="sentences per batch-size trial (the best then runs on the full corpus)")
    ap.add_argument("--runtimes", default="onnx-int8", help="extra jobs.tag --runtime values to time at 1x (comma-separated; empty: none)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    ap.add_argument("--tag-args", default="--actors 1 --cpus-per-actor 1", help="jobs.tag resources (plus --torch-threads from --threads)")
    ap.add_argument("--precisions", default="fp32", help="--only loop-vs-job: the precisions to time, comma-separated (fp32, bf16)")
    ap.add_argument("--pipeline-sentences", type=int, default=0, help="--only loop-vs-job: also time the pipeline (batch 8) on this many sentences, for the vs-pipeline ratios")
    ap.add_argument("--floor", action="store_true", help="--only loop-vs-job: also time the floor (below), and print the best ratio it leaves each precision")
    ap.add_argument("--floor-repeats", type=int, default=3, help="runs of the bare loop and of jobs.tag on the floor model, alternating")
    ap.add_argument("--only", choices=("all", "speed", "memory", "loop-vs-job", "floor"), default="all",
                    help="the speed comparison, the memory comparison, both, just jobs.tag against the bare loop "
                         "(for a large --sentences), or both on a model too small to cost anything (floor_model)")  # fmt: skip
    args = ap.parse_args()

    env = child_env()
    texts = conll_texts(args.data)
    mem = args.memory_sentences or args.sentences
    sizes = {"1x": args.sentences} if args.only != "memory" else {}
    if args.only in ("all", "memory"):
        sizes.update(memory_1x=mem, scaled=int(mem * args.scale))
    for n in sizes.values():
        write_corpus(texts, n, corpus_dir(args.out, n))
    corpus = corpus_dir(args.out, args.sentences)  # written above unless --only memory
    threads = str(args.threads)
    results: dict = {"sentences": sizes, "distinct_sentences": len(texts), "cpus": os.cpu_count(), "threads": args.threads, "model": args.model}

    def show(name: str, value: dict) -> None:
        results[name] = value
        print(name, json.dumps(value), flush=True)

    def bare_loop(precision: str, model: str = args.model) -> dict:
        _, _, out = run_measured([sys.executable, "-c", BARE_LOOP_CHILD, model, corpus, threads, precision, str(args.max_length)], env)
        return json.loads(out.strip().splitlines()[-1])

    def jobs_tag(name: str, n: int, flags: list[str], memory: bool = False, model: str = args.model) -> dict:
        out_dir = os.path.join(args.out, f"tagged-{name}")
        cmd = jobs_tag_command(model, corpus_dir(args.out, n), out_dir, args.max_length, threads, [*args.tag_args.split(), *flags])
        secs, peak, _ = run_measured(cmd, env, memory)
        manifest = json.load(open(os.path.join(out_dir, "_manifest.json")))
        run = manifest["this_run"]
        return {"sentences": n, "flags": " ".join(flags), "seconds_total": round(secs, 1), "job_seconds": run["seconds"], "words": run["words"],
                "words_per_s": run["words"] / run["seconds"], "startup_s": run.get("startup_s"), "rows_written": manifest["rows_written"], "rows_failed": manifest["rows_failed"],
                "peak_tree_pss": peak and peak["bytes"], "peak_by_process_mib": peak and peak["by_process"]}  # fmt: skip

    if args.only in ("all", "speed"):
        trials = []
        for bs in [int(b) for b in args.pipeline_batch_sizes.split(",")]:
            _, _, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, corpus, str(bs), str(args.pipeline_sample), threads], env)
            trials.append(json.loads(out.strip().splitlines()[-1]))
            print("pipeline trial", trials[-1], flush=True)
        best = max(trials, key=lambda r: r["words_per_s"])
        _, _, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, corpus, str(best["batch_size"]), str(args.sentences), threads], env)
        show("pipeline", {**json.loads(out.strip().splitlines()[-1]), "trials": trials})

        for precision in ("fp32", "bf16"):
            show(f"bare_loop_{precision}", bare_loop(precision))

        show("jobs_tag_fp32", jobs_tag("fp32", sizes["1x"], ["--mixed-precision", "none"]))
        # where windows are made: in the actor (the CPU default) or in Ray Data tasks beside it
        show("jobs_tag_fp32_preprocess_tasks", jobs_tag("fp32-tasks", sizes["1x"], ["--mixed-precision", "none", "--preprocess", "tasks"]))
        show("jobs_tag_bf16", jobs_tag("bf16", sizes["1x"], ["--mixed-precision", "bf16"]))
        for runtime in [r for r in args.runtimes.split(",") if r]:
            show(f"jobs_tag_{runtime}", jobs_tag(runtime, sizes["1x"], ["--runtime", runtime, "--mixed-precision", "none"]))
        pipe = results["pipeline"]["words_per_s"]
        ratios = {"pipeline": 1.0}
        for name in ("bare_loop_fp32", "bare_loop_bf16", "jobs_tag_fp32", "jobs_tag_fp32_preprocess_tasks", "jobs_tag_bf16", *[f"jobs_tag_{r}" for r in args.runtimes.split(",") if r]):
            ratios[name] = round(results[name]["words_per_s"] / pipe, 2)
        results["vs_pipeline"] = ratios
        results["jobs_tag_vs_bare_loop"] = {
            "fp32": round(results["jobs_tag_fp32"]["words_per_s"] / results["bare_loop_fp32"]["words_per_s"], 3),
            "fp32_preprocess_tasks": round(results["jobs_tag_fp32_preprocess_tasks"]["words_per_s"] / results["bare_loop_fp32"]["words_per_s"], 3),
            "bf16": round(results["jobs_tag_bf16"]["words_per_s"] / results["bare_loop_bf16"]["words_per_s"], 3),
        }
    if args.only == "loop-vs-job":
        # A large corpus, where jobs.tag's start-up is amortised; the pipeline's rate does not
        # depend on the corpus size, so it runs on --pipeline-sentences only (a 100,000-row
        # pipeline run would take 10 minutes on 2 cores).
        precisions = args.precisions.split(",")
        for precision in precisions:
            show(f"bare_loop_{precision}", bare_loop(precision))
            show(f"jobs_tag_{precision}", jobs_tag(precision, sizes["1x"], precision_flags(precision)))
        results["jobs_tag_vs_bare_loop"] = {p: round(results[f"jobs_tag_{p}"]["words_per_s"] / results[f"bare_loop_{p}"]["words_per_s"], 3) for p in precisions}
        # both clocks from the same line: the loop's own start-up (imports, model load) counted as
        # jobs.tag's actor start-up is
        results["jobs_tag_vs_bare_loop_with_startup"] = {
            p: round(results[f"jobs_tag_{p}"]["words_per_s"] / results[f"bare_loop_{p}"]["words_per_s_with_startup"], 3) for p in precisions
        }
        if args.pipeline_sentences:
            n = args.pipeline_sentences
            write_corpus(texts, n, corpus_dir(args.out, n))
            _, _, out = run_measured([sys.executable, "-c", PIPELINE_CHILD, args.model, corpus_dir(args.out, n), "8", str(n), threads], env)
            show("pipeline", json.loads(out.strip().splitlines()[-1]))
            timed = [f"{kind}_{p}" for p in precisions for kind in ("bare_loop", "jobs_tag")]
            results["vs_pipeline"] = {name: round(results[name]["words_per_s"] / results["pipeline"]["words_per_s"], 2) for name in timed}
    if args.only == "floor" or (args.only == "loop-vs-job" and args.floor):
        # What jobs.tag costs beyond the model: the loop and the job on a model whose forward
        # pass is next to free, alternating. Job seconds less the loop's (its start-up on its
        # clock too) is the time the product adds around any model on this machine.
        tiny = floor_model(args.model, os.path.join(args.out, f"floor-model-{hashlib.sha1(os.path.abspath(args.model).encode()).hexdigest()[:8]}"))
        loops, jobs = [], []
        for _ in range(args.floor_repeats):
            loops.append(bare_loop("fp32", model=tiny))
            jobs.append(jobs_tag("floor", sizes["1x"], precision_flags("fp32"), model=tiny))
            print("floor loop", json.dumps(loops[-1]), "job", json.dumps(jobs[-1]), flush=True)
        loop_s, loop_start = median_low(r["seconds"] for r in loops), median_low(r["startup_s"] for r in loops)
        job_s, job_start = median_low(r["job_seconds"] for r in jobs), median_low(r["startup_s"] for r in jobs)
        show("floor", {"loops": loops, "jobs": jobs, "loop_seconds": round(loop_s, 2), "loop_startup_s": round(loop_start, 2),
                       "job_seconds": job_s, "job_startup_s": job_start,
                       "job_beyond_loop_s": round(job_s - loop_s - loop_start, 2)})  # fmt: skip
        if args.only == "loop-vs-job":
            # If the model's work took no longer in the job than in the loop, jobs.tag would take the
            # loop's time (start-up included) plus the floor's: the best ratio this machine allows.
            beyond = results["floor"]["job_beyond_loop_s"]
            results["jobs_tag_vs_bare_loop_with_startup_at_best"] = {
                p: round((loop := results[f"bare_loop_{p}"]["seconds"] + results[f"bare_loop_{p}"]["startup_s"]) / (loop + beyond), 3)
                for p in args.precisions.split(",")
            }
    if args.only in ("all", "memory"):
        mem_flags = precision_flags(args.memory_precision)
        show("memory_1x", jobs_tag("memory-1x", sizes["memory_1x"], mem_flags, memory=True))
        show("memory_scaled", jobs_tag("memory-scaled", sizes["scaled"], mem_flags, memory=True))

        results["peak_pss_scaled_vs_1x"] = round(results["memory_scaled"]["peak_tree_pss"] / results["memory_1x"]["peak_tree_pss"], 3)
    summary = ("vs_pipeline", "jobs_tag_vs_bare_loop", "jobs_tag_vs_bare_loop_with_startup", "jobs_tag_vs_bare_loop_with_startup_at_best", "peak_pss_scaled_vs_1x")
    if "floor" in results:
        print("floor", json.dumps({k: v for k, v in results["floor"].items() if k not in ("loops", "jobs")}))
    if any(k in results for k in summary):
        print(json.dumps({k: results[k] for k in summary if k in results}, indent=2))
    with open(os.path.join(args.out, f"tag_vs_pipeline{'' if args.only == 'all' else '_' + args.only}.json"), "w") as fh:
        json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
