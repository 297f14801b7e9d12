"""The decoder's self-attention setting: bidirectional (default) or causal, independent of padding."""

from __future__ import annotations

import json

import pytest
import torch

from ner_core import EncoderDecoderTagger, TaggerConfigError
from ner_core.tagger import load_tagger

ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")


def _tagger(tiny_dirs, decoder_attention: str, attn: str = "sdpa") -> EncoderDecoderTagger:
    torch.manual_seed(0)
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(
        tiny_dirs["distilbert"], tiny_dirs["bert_tagger"], decoder_attention=decoder_attention
    )
    model.set_attn_implementation(attn)
    return model.eval()


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
@pytest.mark.parametrize("decoder_attention", ["bidirectional", "causal"])
def test_logits_do_not_depend_on_padding(tiny_dirs, tokenizer, decoder_attention, attn):
    """A row tagged alone (no padding: SDPA reads the modules' is_causal) equals the same row padded in a batch."""
    model = _tagger(tiny_dirs, decoder_attention, attn)
    short, long = "Angela Merkel visited Paris .", "The United Nations met in New York on Monday with delegates ."
    alone = tokenizer([short], return_tensors="pt")
    padded = tokenizer([short, long], padding=True, return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]  # row 0 really is padded
    n = alone["input_ids"].shape[1]
    with torch.no_grad():
        a = model(**alone).logits[0]
        b = model(**padded).logits[0, :n]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attn", ATTENTION_IMPLEMENTATIONS)
def test_bidirectional_decoder_sees_right_context_causal_does_not(tiny_dirs, tokenizer, attn):
    """With the encoder's states held fixed, only a bidirectional decoder's early tokens react to a later change."""
    ids = tokenizer(["Angela Merkel visited Paris today ."], return_tensors="pt")["input_ids"]
    changed = ids.clone()
    changed[0, -2] = tokenizer.convert_tokens_to_ids("london")  # a token near the end
    mask = torch.ones_like(ids)
    for decoder_attention, sees_right in (("bidirectional", True), ("causal", False)):
        model = _tagger(tiny_dirs, decoder_attention, attn)
        with torch.no_grad():
            states = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            states = model.enc_to_dec_proj(states)
            before = model.decode(ids, mask, states)[0, :3]
            after = model.decode(changed, mask, states)[0, :3]
        assert (not torch.allclose(before, after, atol=1e-6)) == sees_right, decoder_attention


def test_setting_is_saved_and_old_models_load_as_trained(tiny_dirs, tokenizer, tmp_path):
    batch = tokenizer(["Angela Merkel visited Paris ."], return_tensors="pt")
    for decoder_attention in ("bidirectional", "causal"):
        model = _tagger(tiny_dirs, decoder_attention)
        model.save_pretrained(tmp_path / decoder_attention)
        saved = json.loads((tmp_path / decoder_attention / "config.json").read_text())
        assert saved["decoder_attention"] == decoder_attention
        reloaded = load_tagger(tmp_path / decoder_attention).eval()
        assert reloaded.config.decoder_attention == decoder_attention
        with torch.no_grad():
            torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)

    # A model saved before the setting existed has no key: it was trained causal and loads causal.
    old = tmp_path / "before_the_setting"
    old.mkdir()
    config = json.loads((tmp_path / "causal" / "config.json").read_text())
    del config["decoder_attention"]
    (old / "config.json").write_text(json.dumps(config))
    (old / "model.safetensors").write_bytes((tmp_path / "causal" / "model.safetensors").read_bytes())
    legacy = load_tagger(old).eval()
    assert legacy.config.decoder_attention == "causal"
    with torch.no_grad():
        torch.testing.assert_close(legacy(**batch).logits, _tagger(tiny_dirs, "causal")(**batch).logits)


def test_new_models_default_to_bidirectional_and_typos_are_refused(tiny_dirs):
    model = EncoderDecoderTagger.from_encoder_decoder_pretrained(tiny_dirs["distilbert"], tiny_dirs["bert_tagger"])
    assert model.config.decoder_attention == "bidirectional"
    # cross-attention to the encoder stays in every decoder layer
    assert all(layer.crossattention is not None for layer in model.decoder.encoder.layer)
    with pytest.raises(TaggerConfigError, match="decoder_attention"):
        EncoderDecoderTagger.from_encoder_decoder_pretrained(
            tiny_dirs["distilbert"], tiny_dirs["bert_tagger"], decoder_attention="sideways"
        )
