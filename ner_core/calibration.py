"""How far entity scores can be trusted: temperature scaling, reliability and score thresholds.

- ``fit_temperature``: one scalar T (Guo et al. 2017, "On Calibration of Modern Neural
  Networks") that minimises the negative log-likelihood of the gold labels of dev words
  under ``softmax(logits / T)``. It moves no label (the argmax stays), only the scores.
- ``entity_calibration``: predicted entities binned by score against how often they are
  right (an exact match of type and span in the gold data): the reliability diagram, its
  expected calibration error (ECE: the bins' gaps between accuracy and mean score,
  weighted by their share of entities), and precision / recall / kept share for keeping
  only entities at or above each of a few thresholds, which is how ``--min-score`` is picked.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ner_core.decoding import Decoded
from ner_core.labels import entity_spans

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _nll(beta: float, log_probs: np.ndarray, gold: np.ndarray) -> float:
    z = log_probs * beta
    top = z.max(-1)
    lse = top + np.log(np.exp(z - top[:, None]).sum(-1))
    return float((lse - z[np.arange(len(gold)), gold]).mean())


def fit_temperature(log_probs: np.ndarray, gold: np.ndarray) -> float:
    """The T minimising the mean NLL of ``gold`` under ``softmax(log_probs / T)``.

    ``log_probs``: per word, the log label distribution at T = 1 (or the logits: a shift per
    word changes nothing). The NLL is convex in 1/T, so a golden-section search finds it.
    """
    log_probs = np.maximum(np.asarray(log_probs, np.float64), -1e4)  # a probability that underflowed to 0
    gold = np.asarray(gold, np.int64)
    if not len(gold):
        return 1.0
    lo, hi = np.log(0.02), np.log(50.0)  # search log(1/T)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll(np.exp(a), log_probs, gold), _nll(np.exp(b), log_probs, gold)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _nll(np.exp(a), log_probs, gold)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll(np.exp(b), log_probs, gold)
    return float(1.0 / np.exp((lo + hi) / 2))


def entity_correct(gold_tags: Sequence[Sequence[str]], decoded: Decoded, types: Sequence[str]) -> np.ndarray:
    """Per predicted entity (in ``decoded``'s order): whether the gold data has it, type and span."""
    gold = {(d, t, s, e) for d, tags in enumerate(gold_tags) for t, s, e in entity_spans(tags, "IOB2")}
    return np.array(
        [
            (int(d), types[int(t)], int(s), int(e)) in gold
            for d, t, s, e in zip(decoded.entity_doc, decoded.entity_type, decoded.entity_start, decoded.entity_end)
        ],
        bool,
    )


def entity_calibration(
    gold_tags: Sequence[Sequence[str]], decoded: Decoded, types: Sequence[str], bins: int = 10, thresholds: Sequence[float] = THRESHOLDS
) -> dict:
    """The reliability bins, ECE and threshold table of ``decoded``'s entity scores (see the module docstring)."""
    correct = entity_correct(gold_tags, decoded, types)
    scores = np.asarray(decoded.entity_score, np.float64)
    n_gold = sum(len(entity_spans(tags, "IOB2")) for tags in gold_tags)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        accuracy = float(correct[inside].mean()) if count else None
        confidence = float(scores[inside].mean()) if count else None
        if count:
            ece += count / len(scores) * abs(accuracy - confidence)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count, "accuracy": accuracy, "confidence": confidence})
    rows = []
    for t in thresholds:
        kept = scores >= t
        tp = int(correct[kept].sum())
        precision = tp / int(kept.sum()) if kept.any() else 0.0
        recall = tp / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": t, "precision": precision, "recall": recall, "f1": f1, "kept": float(kept.mean()) if len(kept) else 0.0})
    return {"entities": int(len(scores)), "ece": float(ece), "bins": table, "thresholds": rows}


def score_labelled(predictor, docs, gold_tags, contexts=None, on_batch=None, fit: bool = False) -> tuple[list[list[str]], dict]:
    """A labelled set through ``predictor``: its predicted labels and the calibration of its entity scores.

    One forward pass gives every word's log-probabilities at T = 1, from which the scores at
    any temperature follow. ``fit``: fit the temperature on this set (jobs.train, on dev);
    else the model's own is used. ``ece_before`` is the ECE at T = 1, for comparison.
    """
    from ner_core.decoding import decode_probabilities, labels_of, probabilities

    windows = predictor.encoder.encode(docs, contexts)
    log_probs, viterbi = predictor.word_outputs(windows, on_batch, temperature=1.0, log=True)
    offsets, table = windows.word_offsets(), predictor.table
    if fit:
        gold_ids = np.asarray(predictor.labels.encode(t for tags in gold_tags for t in tags), np.int64)
        temperature = fit_temperature(log_probs, gold_ids)
    else:
        temperature = float(predictor.settings.temperature)
    decoded = decode_probabilities(probabilities(log_probs, temperature), offsets, table, label_ids=viterbi)
    calibration = {"temperature": temperature, **entity_calibration(gold_tags, decoded, table.types)}
    plain = decoded if temperature == 1.0 else decode_probabilities(probabilities(log_probs), offsets, table, label_ids=viterbi)
    calibration["ece_before"] = calibration["ece"] if plain is decoded else entity_calibration(gold_tags, plain, table.types)["ece"]
    return labels_of(decoded, table), calibration
