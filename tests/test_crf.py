"""The CRF head: exact against brute force on short sequences, IOB2-valid decoding, and the
head in both tagger architectures (loss, gradients, save and reload)."""

from __future__ import annotations

import itertools

import pytest
import torch

from ner_core.crf import CRF, IGNORE_INDEX, allowed_transitions, compact, crf_loss, decode_words, word_start_mask
from ner_core.labels import LabelMap, is_valid

LABEL_SETS = [
    ("O", "B", "I"),  # untyped IOB: the project's first user
    ("O", "B-PER", "I-PER", "B-LOC", "I-LOC"),
    ("O", "B-A", "I-A", "B-B"),  # a type whose I- never appears: B-B I-A is still forbidden
]


def _random_crf(labels, seed=0) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(labels)
    with torch.no_grad():
        for p in (crf.transitions, crf.start, crf.end):
            p.normal_(0, 1.5)
    return crf


def _brute_force(crf: CRF, emissions: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Every allowed label sequence of one row and its score, by enumeration."""
    length, n = emissions.shape
    allowed, allowed_start = allowed_transitions(crf.label_names)
    scores = {}
    for path in itertools.product(range(n), repeat=length):
        if not allowed_start[path[0]] or any(not allowed[a, b] for a, b in zip(path, path[1:])):
            continue
        s = crf.start[path[0]] + crf.end[path[-1]] + sum(emissions[t, j] for t, j in enumerate(path))
        s = s + sum(crf.transitions[a, b] for a, b in zip(path, path[1:]))
        scores[path] = float(s)
    return scores


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_matches_brute_force(labels):
    """log Z, the log-likelihood, Viterbi and the marginals, for lengths 1-4 in one padded batch."""
    crf = _random_crf(labels)
    n, lengths = len(labels), [4, 1, 3, 2]
    torch.manual_seed(1)
    emissions = torch.randn(len(lengths), max(lengths), n) * 2
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        log_z = crf.log_partition(emissions, mask)
        best = crf.viterbi(emissions, mask)
        marg = crf.marginals(emissions, mask)
        for row, length in enumerate(lengths):
            paths = _brute_force(crf, emissions[row, :length])
            all_scores = torch.tensor(list(paths.values()))
            assert log_z[row].item() == pytest.approx(torch.logsumexp(all_scores, 0).item(), abs=1e-4)
            argmax = max(paths, key=paths.get)
            assert best[row, :length].tolist() == list(argmax)
            assert (best[row, length:] == IGNORE_INDEX).all()
            probs = (all_scores - torch.logsumexp(all_scores, 0)).exp()
            expected = torch.zeros(length, n)
            for p, path in zip(probs, paths):
                for t, j in enumerate(path):
                    expected[t, j] += p
            assert torch.allclose(marg[row, :length], expected, atol=1e-5)
            assert (marg[row, length:] == 0).all()
            # the likelihood of one path is its score against all of them
            tags = torch.zeros(1, max(lengths), dtype=torch.long)
            tags[0, :length] = torch.tensor(argmax)
            ll = crf.log_likelihood(emissions[row : row + 1], tags, mask[row : row + 1])
            assert ll.item() == pytest.approx(paths[argmax] - torch.logsumexp(all_scores, 0).item(), abs=1e-4)


def test_constraints_are_iob2():
    allowed, start = allowed_transitions(LabelMap(("O", "B-PER", "I-PER", "B-LOC", "I-LOC")))
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    forbidden = {(names[i], names[j]) for i in range(5) for j in range(5) if not allowed[i, j]}
    assert forbidden == {
        ("O", "I-PER"), ("O", "I-LOC"), ("B-PER", "I-LOC"), ("I-PER", "I-LOC"), ("B-LOC", "I-PER"), ("I-LOC", "I-PER"),
    }  # fmt: skip
    assert [names[j] for j in range(5) if not start[j]] == ["I-PER", "I-LOC"]
    allowed, start = allowed_transitions(["O", "B", "I"])
    assert not allowed[0, 2] and allowed[1, 2] and allowed[2, 2] and start.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="LABEL_0"):
        CRF({0: "LABEL_0", 1: "LABEL_1"})
    with pytest.raises(ValueError, match="not IOB2"):
        CRF(["O", "S-PER", "B-PER", "I-PER", "E-PER"])


@pytest.mark.parametrize("labels", LABEL_SETS[:2])
def test_viterbi_never_breaks_iob2(labels):
    """Emissions that scream for I- after O (and at the start) still decode to valid IOB2."""
    crf = _random_crf(labels, seed=2)
    i_labels = [j for j, name in enumerate(labels) if name.startswith("I")]
    emissions = torch.zeros(3, 6, len(labels))
    emissions[:, :, 0] = 5.0
    emissions[0, :, i_labels[0]] = 100.0  # I everywhere, from the start
    emissions[1, 3, i_labels[0]] = 100.0  # O O O I O O
    emissions[2, :, i_labels[-1]] = 100.0
    emissions[2, 0, 1] = 50.0  # B of the first type, then the last type's I
    mask = torch.ones(3, 6, dtype=torch.bool)
    best = crf.viterbi(emissions, mask)
    for row in best.tolist():
        assert is_valid([labels[j] for j in row], "IOB2"), [labels[j] for j in row]
    # a sequence the constraints allow is not disturbed: B I I ... wins where it is strongly asked for
    emissions = torch.full((1, 3, len(labels)), -10.0)
    emissions[0, 0, 1], emissions[0, 1, 2], emissions[0, 2, 2] = 20.0, 20.0, 20.0
    assert crf.viterbi(emissions, torch.ones(1, 3, dtype=torch.bool)).tolist() == [[1, 2, 2]]


def test_padding_changes_nothing():
    """A row's results are the same alone, padded with zeros, or padded with garbage."""
    labels = LABEL_SETS[1]
    crf = _random_crf(labels, seed=3)
    torch.manual_seed(4)
    row = torch.randn(1, 3, len(labels))
    tags = torch.tensor([[1, 2, 0]])
    alone = (crf.log_likelihood(row, tags, torch.ones(1, 3)), crf.viterbi(row, torch.ones(1, 3)), crf.marginals(row, torch.ones(1, 3)))
    for fill in (0.0, 1e3):
        padded = torch.cat([row, torch.full((1, 4, len(labels)), fill)], 1)
        mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
        padded_tags = torch.cat([tags, torch.full((1, 4), IGNORE_INDEX)], 1)
        assert torch.allclose(crf.log_likelihood(padded, padded_tags, mask), alone[0], atol=1e-5)
        assert crf.viterbi(padded, mask)[:, :3].tolist() == alone[1].tolist()
        assert torch.allclose(crf.marginals(padded, mask)[:, :3], alone[2], atol=1e-6)
    # an empty row is harmless
    empty = torch.zeros(1, 2, dtype=torch.bool)
    assert crf.log_likelihood(torch.randn(1, 2, len(labels)), torch.zeros(1, 2, dtype=torch.long), empty).item() == 0.0
    assert crf.viterbi(torch.randn(1, 2, len(labels)), empty).tolist() == [[IGNORE_INDEX] * 2]


def test_training_lowers_the_negative_log_likelihood():
    """Emissions from a linear layer over random features, CRF and all, fitted to IOB2 sequences."""
    labels = LABEL_SETS[1]
    torch.manual_seed(5)
    crf, proj = CRF(labels), torch.nn.Linear(8, len(labels))
    feats = torch.randn(16, 5, 8)
    gold = [["O", "B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "I-LOC", "I-LOC", "O", "O"]] * 8
    tags = torch.tensor([LabelMap(labels).encode(g) for g in gold])
    mask = torch.ones(16, 5, dtype=torch.bool)
    opt = torch.optim.Adam([*crf.parameters(), *proj.parameters()], lr=0.05)
    losses = []
    for _ in range(40):
        loss = -crf.log_likelihood(proj(feats), tags, mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    assert crf.transitions.grad is not None and crf.transitions.grad.abs().sum() > 0


def test_compact_loss_and_decode_over_word_starts():
    """Subword positions are dropped (IGNORE_INDEX labels), and results go back where they came from."""
    labels = LABEL_SETS[1]
    crf = _random_crf(labels, seed=6)
    torch.manual_seed(7)
    logits = torch.randn(2, 7, len(labels))
    # row 0: words at 1, 2, 4 (3 is a continuation subword); row 1: words at 1, 5
    sub_labels = torch.full((2, 7), IGNORE_INDEX)
    sub_labels[0, [1, 2, 4]] = torch.tensor([1, 2, 0])
    sub_labels[1, [1, 5]] = torch.tensor([2, 2])  # a window cut inside an entity starts with I-PER
    emissions, mask, index = compact(logits, sub_labels != IGNORE_INDEX)
    assert mask.tolist() == [[True] * 3, [True, True, False]]
    assert torch.equal(emissions[0], logits[0, [1, 2, 4]]) and torch.equal(emissions[1, :2], logits[1, [1, 5]])
    tags = torch.tensor([[1, 2, 0], [2, 2, 0]])
    free = torch.tensor([False, True])
    expected = -crf.log_likelihood(emissions, tags, mask, free).mean()
    loss = crf_loss(crf, logits, sub_labels)
    assert torch.allclose(loss, expected) and loss.isfinite()
    # the free start is what keeps that window's loss sane: constrained, its gold path is "impossible"
    assert -crf.log_likelihood(emissions[1:], tags[1:], mask[1:]).item() > 1e3

    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.crf = crf

    ids, scores = decode_words(Tagger(), logits, sub_labels != IGNORE_INDEX)
    best, marg = crf.viterbi(emissions, mask), crf.marginals(emissions, mask)
    assert ids[0, [1, 2, 4]].tolist() == best[0].tolist() and ids[1, [1, 5]].tolist() == best[1, :2].tolist()
    assert (ids[sub_labels == IGNORE_INDEX] == IGNORE_INDEX).all() and (scores[sub_labels == IGNORE_INDEX] == 0).all()
    assert scores[0, 4].item() == pytest.approx(marg[0, 2, best[0, 2]].item())
    # a linear head: argmax and softmax at the same positions
    ids, scores = decode_words(torch.nn.Module(), logits, sub_labels != IGNORE_INDEX)
    assert ids[0, 1].item() == logits[0, 1].argmax().item()
    assert scores[0, 1].item() == pytest.approx(logits[0, 1].softmax(-1).max().item())
    assert (ids[sub_labels == IGNORE_INDEX] == IGNORE_INDEX).all()


# --- the head in both architectures ---------------------------------------------------------


def _labelled_windows(tokenizer, labels: LabelMap):
    """Windows as training makes them: labels on first subwords, IGNORE_INDEX elsewhere; short
    windows, so the long organisation name is cut and a window starts inside it (with I-ORG)."""
    from ner_core.alignment import encode_batch, pad_windows

    docs = [["Angela", "Merkel", "visited", "Paris"], ["Hello", "Lovelace"], "The Bank of New York Mellon Corporation reported".split()]
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER"], ["O", "B-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "I-ORG", "O"]]
    windows = [w for doc in encode_batch(tokenizer, docs, [labels.encode(t) for t in tags], max_length=8, stride=1) for w in doc]
    assert any(labels.labels[next(x for x in w.labels if x != IGNORE_INDEX)] == "I-ORG" for w in windows)
    assert any(sum(x is not None for x in w.word_ids) > sum(x != IGNORE_INDEX for x in w.labels) for w in windows)  # subwords
    batch = {k: torch.tensor(v) for k, v in pad_windows(windows, tokenizer.pad_token_id).items()}
    return batch, windows


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_crf_head_trains_saves_and_reloads(tiny_dirs, tokenizer, tmp_path, arch):
    import json

    from ner_core.crf import crf_of
    from ner_core.model_files import read_saved_model
    from ner_core.tagger import build_tagger, load_tagger, save_tagger, tagger_arch, tagger_head
    from tests.conftest import CONLL_LABELS

    labels = LabelMap(tuple(CONLL_LABELS))
    torch.manual_seed(0)
    batch, windows = _labelled_windows(tokenizer, labels)
    starts = batch["labels"] != IGNORE_INDEX
    # what a predictor builds from the windows is exactly where training put the labels
    assert torch.equal(word_start_mask([w.word_ids for w in windows], starts.shape[1]), starts)
    model = build_tagger(arch, tiny_dirs["distilbert"], tiny_dirs["bert"] if arch == "encoder-decoder" else None, labels=labels, head="crf")
    assert tagger_arch(model) == arch and tagger_head(model) == "crf"
    assert torch.equal(crf_of(model).allowed, allowed_transitions(labels)[0])
    out = model(**batch)  # the training loop's call: input_ids, attention_mask, labels
    # finite and modest: the window that starts with I-ORG is not scored as an impossible path
    assert out.loss.isfinite() and out.loss < 100 and out.logits.shape == (*batch["input_ids"].shape, 9)
    out.loss.backward()
    assert crf_of(model).transitions.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)  # DDP needs every one used

    with torch.no_grad():  # scores that are not zero, so the reload is seen to keep them
        crf_of(model).transitions.normal_()
    save_tagger(model, tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tagger_head"] == "crf" and "auto_map" not in config
    assert read_saved_model(str(tmp_path)).head == "crf"  # what the tagging driver reads, no torch
    reloaded = load_tagger(tmp_path).eval()
    model.eval()
    assert tagger_head(reloaded) == "crf" and type(reloaded) is type(model)
    assert torch.equal(crf_of(reloaded).transitions, crf_of(model).transitions)
    with torch.no_grad():
        before = decode_words(model, model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, starts)
        after = decode_words(reloaded, reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, starts)
    assert torch.equal(before[0], after[0]) and torch.allclose(before[1], after[1])
    assert (before[0][starts] >= 0).all() and ((before[1][starts] > 0) & (before[1][starts] <= 1)).all()


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_models_without_the_setting_load_linear(tiny_dirs, tmp_path, arch):
    import json

    from ner_core.tagger import build_tagger, load_tagger, tagger_head
    from tests.conftest import CONLL_LABELS

    model = build_tagger(arch, tiny_dirs["distilbert"], tiny_dirs["bert"] if arch == "encoder-decoder" else None, labels=LabelMap(tuple(CONLL_LABELS)))
    assert tagger_head(model) == "linear"
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("tagger_head", None)  # as saved before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    reloaded = load_tagger(tmp_path)
    assert tagger_head(reloaded) == "linear" and type(reloaded) is type(model)


@pytest.mark.slow
def test_onnx_engine_keeps_the_crf_head(tiny_dirs, tokenizer, tmp_path):
    """The ONNX session gives emissions only: the head comes from the files, and decodes the same."""
    from ner_core.crf import crf_of, load_crf
    from ner_core.runtime import load_runtime
    from ner_core.tagger import build_tagger, load_tagger, save_tagger
    from tests.conftest import CONLL_LABELS

    labels = LabelMap(tuple(CONLL_LABELS))
    torch.manual_seed(1)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=labels, head="crf")
    with torch.no_grad():
        crf_of(model).transitions.normal_()
    save_tagger(model, tokenizer, tmp_path / "model")
    assert torch.equal(load_crf(str(tmp_path / "model")).transitions, crf_of(model).transitions)
    assert load_crf(tiny_dirs["bert_tagger"]) is None  # a linear head
    batch, _ = _labelled_windows(tokenizer, labels)
    starts = batch["labels"] != IGNORE_INDEX
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch_model = load_tagger(tmp_path / "model").eval()
    onnx_model = load_runtime(tmp_path / "model", "onnx", cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        expected = decode_words(torch_model, torch_model(**inputs).logits, starts)
    got = decode_words(onnx_model, onnx_model(**inputs).logits, starts)
    assert torch.equal(got[0], expected[0]) and torch.allclose(got[1], expected[1], atol=1e-4)


def test_a_new_head_gets_a_new_crf(tiny_dirs, tokenizer):
    """--new-head on a CRF tagger: the transitions were between the old labels, so the CRF is new too."""
    from ner_core.crf import crf_of
    from ner_core.tagger import build_tagger, replace_head
    from tests.conftest import CONLL_LABELS

    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)), head="crf")
    wnut = LabelMap(("O", "B-person", "I-person", "B-product", "I-product"))
    replace_head(model, wnut)
    assert crf_of(model).label_names == list(wnut.labels) and crf_of(model).transitions.shape == (5, 5)
    batch, _ = _labelled_windows(tokenizer, LabelMap(("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")))
    labels = batch["labels"].where(batch["labels"] < 5, 0)  # any ids of the new label set
    assert model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss.isfinite()
