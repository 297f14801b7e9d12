"""WordTagger: batched, windowed prediction gives one valid IOB2 label per word."""

from __future__ import annotations

import torch

from ner_core.inference import InferenceSettings, WordTagger
from ner_core.labels import LabelMap, is_valid
from ner_core.tagger import build_tagger
from tests.conftest import CONLL_LABELS


def test_one_label_per_word_for_any_length(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)))
    tagger = WordTagger(model, tokenizer, InferenceSettings(max_length=16, stride=4, batch_size=3))
    docs = [["Paris"], [], [f"w{i}" for i in range(100)], ["Zürich", "\u200b", "🙂"]]
    labels = tagger.predict(docs)
    assert [len(x) for x in labels] == [1, 0, 100, 3]
    assert all(is_valid(x, "IOB2") and set(x) <= set(CONLL_LABELS) for x in labels)


def test_matches_a_plain_forward_pass(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = build_tagger("encoder-decoder", tiny_dirs["distilbert"], tiny_dirs["bert_tagger"]).eval()
    words = ["Angela", "Merkel", "visited", "Paris"]
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        best = model(**enc).logits.argmax(-1)[0].tolist()
    first = {}
    for pos, w in enumerate(enc.word_ids()):
        if w is not None and w not in first:
            first[w] = best[pos]
    expected = [first[i] for i in range(len(words))]
    assert WordTagger(model, tokenizer).predict_ids([words]) == [expected]
