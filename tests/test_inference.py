"""Predictor: batched, windowed prediction gives one valid IOB2 label per word."""

from __future__ import annotations

import torch

from ner_core.inference import InferenceSettings, length_batches
from ner_core.predictor import Predictor
from ner_core.labels import LabelMap, is_valid
from ner_core.tagger import build_tagger
from tests.conftest import CONLL_LABELS


def test_one_label_per_word_for_any_length(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)))
    tagger = Predictor(model, tokenizer, InferenceSettings(max_length=16, stride=4, batch_size=3))
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
    assert Predictor(model, tokenizer).predict_ids([words]) == [expected]


def test_forward_batches_group_similar_lengths_within_their_limits():
    lengths = [30, 5, 6, 5, 31, 120, 7, 32, 6, 64]
    batches = length_batches(lengths, max_windows=3, max_tokens=100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every window once
    for b in batches:
        widths = [lengths[i] for i in b]
        assert widths == sorted(widths) and len(b) <= 3
        assert len(b) == 1 or len(b) * max(widths) <= 100  # a single long window still gets its pass
    assert [[lengths[i] for i in b] for b in batches] == [[5, 5, 6], [6, 7, 30], [31, 32], [64], [120]]
    # the limits are what cuts: without them, one sorted run in batches of max_windows
    assert [len(b) for b in length_batches(lengths, max_windows=4)] == [4, 4, 2]
    # the limit on positions counts the padded length (4 x 6 = 24 would fit in 32; 4 x 9 does not)
    short = [6, 5, 6, 5]
    assert [[short[i] for i in b] for b in length_batches(short, 8, max_tokens=32)] == [[5, 5, 6, 6]]
    assert [[short[i] for i in b] for b in length_batches(short, 8, max_tokens=32, width=lambda n: n + 3)] == [[5, 5, 6], [6]]


def test_one_batching_rule_by_dtype_with_the_devices_budget():
    import torch

    from ner_core.inference import batch_policy

    lengths = [3, 17, 23, 33, 100]
    for device in ("cpu", "cuda"):
        assert [batch_policy(device, torch.float32).width(n) for n in lengths] == lengths  # fp32: exact
        for dtype in (torch.bfloat16, torch.float16):  # a few shapes per doubling; multiples of 8 above 64
            assert [batch_policy(device, dtype).width(n) for n in lengths] == [3, 18, 24, 36, 104]
    # positions per pass: a GPU takes four times a CPU's (64 windows of 128 subwords)
    assert [len(b) for b in batch_policy("cpu", torch.float32).batches([128] * 64)] == [16] * 4
    assert [len(b) for b in batch_policy("cuda", torch.float32).batches([128] * 64)] == [64]


def test_predictions_do_not_depend_on_how_windows_are_batched(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)))
    docs = [[f"w{j}" for j in range(n)] for n in (1, 40, 3, 17, 2, 90, 5)]
    one_by_one = Predictor(model, tokenizer, InferenceSettings(max_length=32, stride=8, batch_size=1)).predict_ids(docs)
    packed = Predictor(model, tokenizer, InferenceSettings(max_length=32, stride=8, batch_size=64)).predict_ids(docs)
    assert packed == one_by_one
