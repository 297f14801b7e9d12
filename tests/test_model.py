"""EncoderDecoderTagger: the saved token classifier survives, and the model behaves like any HF tagger."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForTokenClassification, BertConfig, EncoderDecoderModel

from ner_core import EncoderDecoderTagger, TaggerConfigError
from ner_core.tagger import build_tagger, load_tagger, max_positions, replace_head, save_tagger, tagger_arch, tagger_labels
from ner_core.labels import LabelMap
from tests.conftest import CONLL_LABELS, ENTITY_LABELS


def _batch(tokenizer, texts=("Angela Merkel visited Paris .", "Hello")):
    return tokenizer(list(texts), padding=True, return_tensors="pt")


def test_keeps_saved_token_classifier(tiny_dirs, tokenizer):
    saved = AutoModelForTokenClassification.from_pretrained(tiny_dirs["bert_tagger"])
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])

    assert isinstance(model.classifier, torch.nn.Linear)
    assert model.classifier.out_features == 3
    assert torch.equal(model.classifier.weight, saved.classifier.weight)
    assert torch.equal(model.classifier.bias, saved.classifier.bias)
    assert model.config.id2label == ENTITY_LABELS
    assert model.config.num_labels == 3
    # decoder self-attention weights come from the checkpoint too
    assert torch.equal(
        model.decoder.encoder.layer[1].attention.self.value.weight,
        saved.bert.encoder.layer[1].attention.self.value.weight,
    )
    # encoder width 32, decoder width 48: a projection bridges them
    assert model.enc_to_dec_proj is not None and model.enc_to_dec_proj.out_features == 48

    batch = _batch(tokenizer)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 3)


def test_transformers_encoder_decoder_loses_the_head(tiny_dirs):
    """The trap this project exists to avoid: HF swaps the 3-way head for a vocab-sized LM head."""
    hf = EncoderDecoderModel.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])
    out = hf.decoder.get_output_embeddings()
    assert out.out_features == hf.config.decoder.vocab_size != 3


def test_training_step_lowers_loss(tiny_dirs, tokenizer):
    torch.manual_seed(0)
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])
    model.train()
    batch = _batch(tokenizer)
    labels = torch.ones_like(batch["input_ids"])
    labels[batch["attention_mask"] == 0] = -100
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.5
    # every parameter takes part in the loss (DDP would fail on unused ones)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_loss_ignores_minus_100(tiny_dirs, tokenizer):
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])
    batch = _batch(tokenizer, ["Paris"])
    labels = torch.full_like(batch["input_ids"], -100)
    labels[0, 1] = 2
    out = model(input_ids=batch["input_ids"], labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 1:2], torch.tensor([2]))
    assert torch.allclose(out.loss, expected)


def test_save_and_load_round_trip(tiny_dirs, tokenizer, tmp_path):
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "encoder-decoder-tagger"
    assert "auto_map" not in config  # no remote code needed

    for loaded in (EncoderDecoderTagger.from_pretrained(tmp_path), AutoModelForTokenClassification.from_pretrained(tmp_path)):
        assert isinstance(loaded, EncoderDecoderTagger)
        loaded.eval()
        model.eval()
        batch = _batch(tokenizer)
        with torch.no_grad():
            assert torch.equal(loaded(**batch).logits, model(**batch).logits)
        assert loaded.config.id2label == ENTITY_LABELS
    # the weights file holds the classifier itself
    assert load_file(tmp_path / "model.safetensors")["classifier.weight"].shape == (3, 48)


def test_fresh_head_when_decoder_has_none(tiny_dirs):
    labels = LabelMap(tuple(CONLL_LABELS))
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(
        tiny_dirs["distilbert"], tiny_dirs["bert"], id2label=labels.id2label
    )
    assert model.classifier.out_features == 9
    assert model.enc_to_dec_proj is None  # both 32 wide
    assert tagger_labels(model) == labels
    with pytest.raises(TaggerConfigError, match="pass num_labels or id2label"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert"])


def test_clear_errors_before_weights_load(tiny_dirs, tmp_path):
    # different vocabularies
    other = tmp_path / "other_vocab"
    BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(other)
    with pytest.raises(TaggerConfigError, match="vocab_size"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], other, num_labels=3)
    # a decoder type without cross-attention (DistilBERT); the directory has a config only,
    # so reaching the weights would raise a different error
    no_weights = tmp_path / "distil_cfg_only"
    from transformers import AutoConfig

    AutoConfig.from_pretrained(tiny_dirs["distilbert"]).save_pretrained(no_weights)
    with pytest.raises(TaggerConfigError, match="cross-attention"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["bert"], no_weights, num_labels=3)
    # label map size disagrees with num_labels
    with pytest.raises(TaggerConfigError, match="num_labels=4"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(
            tiny_dirs["distilbert"], tiny_dirs["bert"], num_labels=4, id2label=ENTITY_LABELS
        )
    # asking a saved 3-way head for 9 labels is refused rather than silently resized
    with pytest.raises(TaggerConfigError, match="num_labels=3"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"], num_labels=9)


def test_tokenizer_vocab_mismatch_is_caught(tiny_dirs, tmp_path):
    import shutil

    changed = tmp_path / "bert_other_tok"
    shutil.copytree(tiny_dirs["bert"], changed)
    tok_json = json.loads((changed / "tokenizer.json").read_text())
    vocab = tok_json["model"]["vocab"]
    vocab["zzz-new-token"] = vocab.pop("paris")
    (changed / "tokenizer.json").write_text(json.dumps(tok_json))
    with pytest.raises(TaggerConfigError, match="different tokenizer vocabularies"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], changed, num_labels=3)


def test_both_architectures_share_one_interface(tiny_dirs, tokenizer, tmp_path):
    labels = LabelMap(tuple(CONLL_LABELS))
    batch = _batch(tokenizer)
    for arch, decoder in (("encoder-decoder", tiny_dirs["bert"]), ("encoder", None)):
        model = build_tagger(arch, tiny_dirs["distilbert"], decoder, labels=labels)
        assert tagger_arch(model) == arch
        assert tagger_labels(model) == labels
        assert max_positions(model) == 128
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=torch.zeros_like(batch["input_ids"]))
        assert out.logits.shape[-1] == 9 and out.loss is not None
        model.save_pretrained(tmp_path / arch)
        assert tagger_arch(load_tagger(tmp_path / arch)) == arch


def test_packaged_minilm_as_encoder_and_decoder(minilm_path, tokenizer, tmp_path):
    """The real pretrained MiniLM on both sides, with a fresh CoNLL head."""
    labels = LabelMap(tuple(CONLL_LABELS))
    model = build_tagger("encoder-decoder", minilm_path, labels=labels)
    assert model.classifier.out_features == 9
    assert model.enc_to_dec_proj is None
    from transformers import AutoModel

    reference = AutoModel.from_pretrained(minilm_path)
    assert torch.equal(model.encoder.embeddings.word_embeddings.weight, reference.embeddings.word_embeddings.weight)
    assert torch.equal(
        model.decoder.encoder.layer[5].output.dense.weight, reference.encoder.layer[5].output.dense.weight
    )
    batch = _batch(tokenizer)
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 9)
    model.save_pretrained(tmp_path)
    reloaded = load_tagger(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, logits)


@pytest.mark.parametrize("arch", ["encoder", "encoder-decoder"])
def test_a_new_head_for_another_label_set_keeps_everything_else(tiny_dirs, tokenizer, tmp_path, arch):
    """Transfer to another label set: only the classifier is new, and the label map goes with it."""
    if arch == "encoder":
        model = build_tagger(arch, tiny_dirs["bert_tagger"])  # its saved 3-label head
    else:
        model = build_tagger(arch, tiny_dirs["distilbert"], tiny_dirs["bert"], labels=LabelMap(tuple(CONLL_LABELS)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wnut = LabelMap(("O", "B-person", "I-person", "B-product", "I-product"))
    replace_head(model, wnut)
    changed = sorted(k for k, v in model.state_dict().items() if before[k].shape != v.shape or not before[k].equal(v))
    assert changed == ["classifier.bias", "classifier.weight"]
    ids = tokenizer(["Ada Lovelace visited Paris"], return_tensors="pt")
    out = model(**ids, labels=torch.full_like(ids["input_ids"], 4))  # the loss sees 5 outputs too
    assert out.logits.shape[-1] == 5 and out.loss.isfinite()
    save_tagger(model, tokenizer, tmp_path)
    assert tagger_labels(load_tagger(tmp_path)) == wnut


def test_a_saved_tagger_loads_back_exactly_as_the_readme_shows(tiny_dirs, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (snippet,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if 'from_pretrained("tagger")' in b]
    EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"]).save_pretrained(tmp_path / "tagger")
    check = snippet + "\nprint(type(tagger).__name__, tagger.config.id2label[1])\n"
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["EncoderDecoderTagger", "B-ENT"]
