"""Entity-score calibration by aggregation: the minimum of the tokens' scores (what ships), their mean, their product.

    .venv/bin/python benchmarks/score_aggregation.py --model runs/conll-minilm-encoder-e1 --data ../shared/data/conll2003/dev.txt --scheme IOB1

One forward pass (``Predictor.word_outputs``) gives the words' log-probabilities; the entity
scores are re-aggregated from the same token scores and scored with ``entity_calibration``,
at T = 1 and at the model's own temperature.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ner_core.calibration import entity_calibration  # noqa: E402
from ner_core.conll import read_conll  # noqa: E402
from ner_core.decoding import decode_probabilities, probabilities  # noqa: E402
from ner_core.labels import convert_scheme  # noqa: E402
from ner_core.predictor import Predictor  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="labelled CoNLL file (tune on dev)")
    ap.add_argument("--scheme", default="IOB2")
    args = ap.parse_args()
    predictor = Predictor.load(args.model, device="cpu")
    sentences = [s for s in read_conll(args.data) if s.tokens]
    gold = [convert_scheme(s.tags, args.scheme, "IOB2") for s in sentences]
    windows = predictor.encoder.encode([s.tokens for s in sentences])
    log_probs, viterbi = predictor.word_outputs(windows, temperature=1.0, log=True)
    offsets = windows.word_offsets()
    for temperature in (1.0, predictor.settings.temperature):
        decoded = decode_probabilities(probabilities(log_probs, temperature), offsets, predictor.table, label_ids=viterbi)
        base = offsets[decoded.entity_doc]
        spans = list(zip(base + decoded.entity_start, base + decoded.entity_end))
        for name, aggregate in (("min", np.min), ("mean", np.mean), ("product", np.prod)):
            decoded.entity_score = np.array([aggregate(decoded.scores[a:b]) for a, b in spans], np.float32)
            print(f"T={temperature:.3f} {name}: ECE {entity_calibration(gold, decoded, predictor.table.types)['ece']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
