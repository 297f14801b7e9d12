"""How much entity F1 a tagger loses on raw text against the same sentences given as words.

    .venv/bin/python benchmarks/raw_text_f1.py --model runs/conll-minilm-encoder \\
        --data ../shared/data/conll2003/test.txt --scheme IOB1

Each CoNLL sentence is scored twice with the same model in this one process:

- word-level: the gold words are tagged as given (what ``jobs.evaluate`` reports);
- raw text: the words are written back as text with natural spacing
  (``ner_core.text.join_naturally``: ``"(AP) U.S. officials don't say."``),
  and that text goes through the raw-text path of ``jobs.tag``
  (``ner_core.documents.document_from_text``, then ``Predictor``); predicted
  entities are character spans in the text, compared with the gold entities
  mapped to character spans of the same text.

Both are strict micro entity F1 over (sentence, type, start, end), so a raw-text
entity counts only when the splitter gave it exactly the gold boundaries.
Also printed: the share of sentences whose words ``split_words`` gives back
exactly, which needs no model (leave out ``--model`` to print only that, and
``--show N`` to see the first N sentences it gets wrong).
No Ray: everything runs in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ner_core.conll import read_conll  # noqa: E402
from ner_core.labels import convert_scheme  # noqa: E402
from ner_core.spans import extract_spans  # noqa: E402
from ner_core.text import join_naturally, split_words  # noqa: E402


def prf(gold: set, pred: set) -> dict:
    """Micro precision/recall/F1 of predicted against gold entity sets."""
    tp = len(gold & pred)
    p = tp / len(pred) if pred else 0.0
    r = tp / len(gold) if gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "gold": len(gold), "predicted": len(pred)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="labelled CoNLL file")
    ap.add_argument("--model", help="trained model directory; without it only the word-splitting agreement is printed")
    ap.add_argument("--scheme", default="IOB2", help="tag scheme of the data (IOB1 for CoNLL-2003)")
    ap.add_argument("--limit", type=int, help="first N sentences only")
    ap.add_argument("--show", type=int, default=0, help="print the first N sentences the splitter does not give back")
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--stride", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    sentences = [s for s in read_conll(args.data) if s.tokens][: args.limit]
    gold_tags = [convert_scheme(s.tags, args.scheme, "IOB2") if args.scheme != "IOB2" else list(s.tags) for s in sentences]
    rebuilt = [join_naturally(s.tokens) for s in sentences]

    exact = 0
    shown = 0
    for s, (text, _) in zip(sentences, rebuilt):
        split = [w.text for w in split_words(text)]
        if split == s.tokens:
            exact += 1
        elif shown < args.show:
            shown += 1
            print(f"{s.source}:{s.line}\n  text:  {text}\n  gold:  {s.tokens}\n  split: {split}")
    result: dict = {"data": args.data, "sentences": len(sentences), "split_exact": exact / len(sentences)}
    print(f"{len(sentences)} sentences; split_words gives the words back exactly for {exact} ({100 * exact / len(sentences):.2f}%)")

    if args.model:
        result.update(score_model(args, sentences, gold_tags, rebuilt))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


def score_model(args, sentences, gold_tags, rebuilt) -> dict:
    from ner_core.documents import document_from_text
    from ner_core.predictor import Predictor

    # the model's own window settings (inference.json), as jobs.evaluate and jobs.tag use them
    tagger = Predictor.load(args.model, device="cpu", max_length=args.max_length, stride=args.stride, batch_size=args.batch_size)
    gold: set = set()
    for i, (tags, (_, offsets)) in enumerate(zip(gold_tags, rebuilt)):
        for span in extract_spans(tags):
            gold.add((i, span.type, offsets[span.start].start, offsets[span.end - 1].end))

    started = time.perf_counter()
    word_pred = tagger.predict([s.tokens for s in sentences])
    word_seconds = time.perf_counter() - started
    word_level: set = set()
    for i, (tags, (_, offsets)) in enumerate(zip(word_pred, rebuilt)):
        for span in extract_spans(tags):
            word_level.add((i, span.type, offsets[span.start].start, offsets[span.end - 1].end))

    started = time.perf_counter()
    docs = [document_from_text({"text": text}, "text") for text, _ in rebuilt]
    raw_pred = tagger.predict([d.words for d in docs])
    raw_seconds = time.perf_counter() - started
    raw_text: set = set()
    for i, (doc, tags) in enumerate(zip(docs, raw_pred)):
        for ent in doc.entities(extract_spans(tags)):
            raw_text.add((i, ent["type"], ent["start"], ent["end"]))

    word_m, raw_m = prf(gold, word_level), prf(gold, raw_text)
    print(f"{'':10s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'seconds':>8s}")
    for name, m, secs in (("words", word_m, word_seconds), ("raw text", raw_m, raw_seconds)):
        print(f"{name:10s} {100 * m['precision']:9.2f} {100 * m['recall']:9.2f} {100 * m['f1']:9.2f} {secs:8.1f}")
    diff = 100 * (raw_m["f1"] - word_m["f1"])
    print(f"raw text - words: {diff:+.2f} F1 ({len(gold)} gold entities)")
    return {"model": args.model, "word_level": word_m, "raw_text": raw_m, "f1_difference": diff}


if __name__ == "__main__":
    raise SystemExit(main())
