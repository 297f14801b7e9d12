"""Entity-level metrics with seqeval.

Strict IOB2 mode is what training reports: an entity counts only when its
type and exact boundaries match. Gold data in IOB1 (CoNLL-2003 keeps IOB1
remnants) must be converted to IOB2 first; strict scoring of the converted
gold equals conlleval on the original.
"""

from __future__ import annotations

from collections.abc import Sequence

from seqeval.metrics import classification_report
from seqeval.scheme import IOB2, IOBES, Entities

from ner_core.labels import entity_spans

_SCHEMES = {"IOB2": IOB2, "IOBES": IOBES}


def evaluate_tags(
    y_true: Sequence[Sequence[str]],
    y_pred: Sequence[Sequence[str]],
    scheme: str = "IOB2",
    mode: str | None = "strict",
) -> dict:
    """Micro precision/recall/F1 over entities, token accuracy, and the same per type."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} gold sentences but {len(y_pred)} predicted")
    for i, (t, p) in enumerate(zip(y_true, y_pred)):
        if len(t) != len(p):
            raise ValueError(f"sentence {i}: {len(t)} gold tags but {len(p)} predicted")
    true, pred = [list(s) for s in y_true], [list(s) for s in y_pred]
    kwargs = {"mode": mode, "scheme": _SCHEMES[scheme]} if mode == "strict" else {}
    report = classification_report(true, pred, output_dict=True, zero_division=0, **kwargs) if true else {}
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    tokens = sum(len(s) for s in true)
    correct = sum(a == b for t, p in zip(true, pred) for a, b in zip(t, p))
    per_type = {
        name: {"precision": float(v["precision"]), "recall": float(v["recall"]), "f1": float(v["f1-score"]), "support": int(v["support"])}
        for name, v in report.items()
        if name not in ("micro avg", "macro avg", "weighted avg")
    }
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "support": int(micro["support"]),
        "token_accuracy": correct / tokens if tokens else 0.0,
        "num_sentences": len(true),
        "per_type": per_type,
        "confusion": entity_confusion(true, pred, scheme, mode),
    }


NONE = "(none)"


def _spans(sequences: list[list[str]], scheme: str, mode: str | None) -> list[set[tuple[int, int, str]]]:
    """Entities per sentence as ``(start, end, type)``, read the way the scores read them."""
    if mode == "strict":
        found = Entities(sequences, _SCHEMES[scheme], suffix=False).entities
        return [{(e.start, e.end, e.tag) for e in sentence} for sentence in found]
    return [{(s, e, t) for t, s, e in entity_spans(seq, scheme)} for seq in sequences]


def entity_confusion(
    y_true: Sequence[Sequence[str]], y_pred: Sequence[Sequence[str]], scheme: str = "IOB2", mode: str | None = "strict"
) -> dict:
    """Which type each gold entity was predicted as, by exact boundaries.

    ``matrix[g][p]`` counts gold entities of type ``types[g]`` whose exact span
    was predicted as ``types[p]``; the last column (``(none)``) counts gold
    entities with no prediction over exactly their span (missed, or found with
    wrong boundaries) and the last row predicted entities whose span is no gold
    entity's (spurious). The diagonal is therefore the strict true positives per
    type, so it agrees with the precision/recall table beside it. Types are
    those seen in gold or predictions, sorted; the last label is ``(none)``.
    """
    gold = _spans([list(s) for s in y_true], scheme, mode)
    pred = _spans([list(s) for s in y_pred], scheme, mode)
    types = sorted({t for sent in gold + pred for _, _, t in sent})
    index = {t: i for i, t in enumerate(types)}
    none = len(types)
    matrix = [[0] * (none + 1) for _ in range(none + 1)]
    for g_sent, p_sent in zip(gold, pred):
        predicted = {(s, e): t for s, e, t in p_sent}
        gold_spans = {(s, e) for s, e, _ in g_sent}
        for s, e, t in g_sent:
            matrix[index[t]][index[predicted[(s, e)]] if (s, e) in predicted else none] += 1
        for s, e, t in p_sent:
            if (s, e) not in gold_spans:
                matrix[none][index[t]] += 1
    return {"labels": [*types, NONE], "matrix": matrix}


def format_report(metrics: dict) -> str:
    """A small table: overall first, then each entity type."""
    lines = [f"{'':10s} {'precision':>9s} {'recall':>9s} {'f1':>9s} {'support':>8s}"]
    for name, m in sorted(metrics["per_type"].items()):
        lines.append(f"{name:10s} {m['precision']:9.4f} {m['recall']:9.4f} {m['f1']:9.4f} {m['support']:8d}")
    lines.append(
        f"{'overall':10s} {metrics['precision']:9.4f} {metrics['recall']:9.4f} {metrics['f1']:9.4f} {metrics['support']:8d}"
    )
    lines.append(f"token accuracy {metrics['token_accuracy']:.4f} over {metrics['num_sentences']} sentences")
    return "\n".join(lines)
