"""The model's forward passes alone, batched the ways jobs.tag could batch them: positions and seconds.

    .venv/bin/python benchmarks/forward_batching.py --model runs/conll-minilm-encoder-e1 --precision bf16 \
        --modes 2048:8:2048,2048:o8:2048,2048:0:2048,20000:0

Why: on CPU the tagging actor spends about 90% of a call in the forward pass, so the
padding its batches carry is most of what it can win or lose against a bare loop. A mode
``ROWS:PAD[:TOKENS]`` sorts the windows of each ``ROWS``-row slice by length (jobs.tag's
``--batch-size``: rows per actor call), cuts them into batches of 64 windows and at most
``TOKENS`` positions (jobs.tag's ``--batch-tokens``; none if left out) and pads each batch to
a multiple of ``PAD`` positions (0: exact), or, for ``PAD`` = ``oN``, to one of N lengths per
doubling (``ner_core.alignment.padded_length``; ``o8`` is what bf16 actors on CPU do).
``20000:0`` on a 20,000-row corpus is the bare loop's batching (one global sort). All modes
run in one process, alternating, for ``--rounds`` rounds, so the machine's drift hits them
alike (and they share one oneDNN kernel cache). The corpus is the one ``tag_vs_pipeline.py``
writes (raw text, split by jobs.tag's splitter, case markers as the model was trained with,
truncated at 128 subwords); tokenizing and batching are off the clock.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def batches(ids: list[list[int]], call_rows: int, pad: str, max_tokens: int | None = None, per_batch: int = 64):
    """(input_ids, attention_mask) tensors as jobs.tag's CPU actor would make them for ``call_rows``-row calls.

    The order and the cuts are ``ner_core.inference.length_batches``', as in the actor's
    ``Predictor`` (at most 64 windows and ``--batch-tokens`` positions per batch).
    """
    import torch

    from ner_core.alignment import padded_length
    from ner_core.inference import length_batches

    if pad.startswith("o"):  # lengths per octave, as the policy rounds bf16
        width = lambda n: padded_length(n, int(pad[1:]))  # noqa: E731
    else:  # a multiple of PAD (0: exact)
        width = lambda n: -(-n // int(pad)) * int(pad) if int(pad) else n  # noqa: E731
    out = []
    for start in range(0, len(ids), call_rows):
        call = ids[start : start + call_rows]
        for idx in length_batches([len(x) for x in call], per_batch, max_tokens, width):
            n = width(max(len(call[i]) for i in idx))
            x = torch.zeros((len(idx), n), dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, i in enumerate(idx):
                x[r, : len(call[i])] = torch.tensor(call[i])
                mask[r, : len(call[i])] = 1
            out.append((x, mask))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="runs/conll-minilm-encoder-e5")
    ap.add_argument("--corpus", default="bench_out/corpus-mixed-20000", help="a folder of JSONL files (tag_vs_pipeline.py writes them)")
    ap.add_argument("--precision", default="bf16", help="none (fp32) or bf16 (weights cast, as jobs.tag on CPU)")
    ap.add_argument("--modes", default="2048:8:2048,2048:o8:2048,2048:0:2048,20000:0", help="ROWS:PAD[:TOKENS],...")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    import torch

    from ner_core.casing import word_case
    from ner_core.precision import for_inference
    from ner_core.tagger import load_tagger, load_tokenizer
    from ner_core.text import split_words

    torch.set_num_threads(args.threads)
    model, tok = load_tagger(args.model).eval(), load_tokenizer(args.model)
    model, _ = for_inference(model, args.precision, "cpu")
    paths = sorted(glob.glob(os.path.join(args.corpus, "*.jsonl")))
    if not paths:
        raise SystemExit(f"no JSONL files in {args.corpus}: run benchmarks/tag_vs_pipeline.py first")
    docs = [[w.text for w in split_words(json.loads(line)["text"])] for p in paths for line in open(p)]
    docs = [[t for w in d for t in ((word_case(w), w) if word_case(w) else (w,))] for d in docs]
    ids = tok(docs, is_split_into_words=True, truncation=True, max_length=128)["input_ids"]
    for rnd in range(args.rounds):
        for mode in args.modes.split(","):
            rows, pad, *tokens = mode.split(":")
            prepared = batches(ids, int(rows), pad, int(tokens[0]) if tokens else None)
            start = time.time()
            with torch.inference_mode():
                for x, mask in prepared:
                    model(input_ids=x, attention_mask=mask).logits.argmax(-1)
            seconds = time.time() - start
            positions = sum(x.numel() for x, _ in prepared)
            shapes = len({tuple(x.shape) for x, _ in prepared})
            print(json.dumps({"round": rnd, "mode": mode, "precision": args.precision, "positions": positions, "shapes": shapes, "seconds": round(seconds, 2)}), flush=True)


if __name__ == "__main__":
    main()
