"""``--mixed-precision`` means the same thing in training, evaluation and tagging."""

import dataclasses

import pytest
import torch

from ner_core.precision import autocast_dtype


def test_auto_keeps_cpu_in_fp32_and_bf16_is_an_explicit_choice():
    assert autocast_dtype("auto", "cpu") is None
    assert autocast_dtype("none", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16


def test_gpu_settings():
    assert autocast_dtype("fp16", "cuda") is torch.float16
    assert autocast_dtype("bf16", "cuda") is torch.bfloat16
    assert autocast_dtype("none", "cuda") is None


def test_fp16_on_cpu_and_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match="must be one of auto, bf16, fp16, none"):
        autocast_dtype("fp32", "cpu")


def test_bf16_tagging_on_cpu_agrees_with_fp32(tiny_dirs, tokenizer):
    from ner_core.predictor import Predictor
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tiny_dirs["bert_tagger"])
    docs = [["Anna", "met", "Bob", "in", "Paris"], ["one"], ["word"] * 40]
    fp32 = Predictor(model, tokenizer).predict_ids(docs)
    bf16 = Predictor(model, tokenizer, autocast_dtype=autocast_dtype("bf16", "cpu")).predict_ids(docs)
    assert [len(x) for x in bf16] == [5, 1, 40]
    agree = sum(a == b for x, y in zip(fp32, bf16) for a, b in zip(x, y))
    assert agree / 46 > 0.8


def test_bf16_inference_on_cpu_casts_the_weights_once_instead_of_autocasting(tiny_dirs, tokenizer):
    import torch
    from ner_core.predictor import Predictor
    from ner_core.precision import for_inference
    from transformers import AutoModelForTokenClassification

    model = AutoModelForTokenClassification.from_pretrained(tiny_dirs["bert_tagger"])
    docs = [["Anna", "met", "Bob", "in", "Paris"], ["one"], ["word"] * 40]
    fp32 = Predictor(model, tokenizer).predict_ids(docs)
    same, dtype = for_inference(model, "auto", "cpu")  # auto on CPU: fp32, untouched
    assert same is model and dtype is None and next(model.parameters()).dtype == torch.float32
    cast, dtype = for_inference(AutoModelForTokenClassification.from_pretrained(tiny_dirs["bert_tagger"]), "bf16", "cpu")
    assert dtype is None and {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    bf16 = Predictor(cast, tokenizer).predict_ids(docs)
    assert [len(x) for x in bf16] == [5, 1, 40]
    agree = sum(a == b for x, y in zip(fp32, bf16) for a, b in zip(x, y))
    assert agree / 46 > 0.8
    assert for_inference(model, "bf16", "cuda")[1] == torch.bfloat16  # GPUs keep autocast


@pytest.mark.slow
def test_bf16_weights_on_cpu_pad_batches_to_a_few_shapes_with_the_same_labels(tiny_dirs, tokenizer):
    # A bf16 actor's heap grew with every new batch length under exact padding (oneDNN keeps
    # kernels per shape); lengths rounded within octaves bound the shapes (fp32 stays exact).
    from transformers import AutoModelForTokenClassification

    from ner_core.alignment import padded_length
    from ner_core.inference import InferenceSettings
    from ner_core.precision import for_inference
    from ner_core.predictor import Predictor

    load = lambda: AutoModelForTokenClassification.from_pretrained(tiny_dirs["bert_tagger"])  # noqa: E731
    docs = [["word"] * n for n in range(1, 40)]
    widths = {}
    for name, model in (("bf16", for_inference(load(), "bf16", "cpu")[0]), ("fp32", load())):
        seen = widths[name] = set()
        model.register_forward_pre_hook(lambda _, args, kwargs, seen=seen: seen.add(kwargs["input_ids"].shape[1]), with_kwargs=True)
        Predictor(model, tokenizer, InferenceSettings(batch_size=1)).predict_ids(docs)
    assert widths["fp32"] == set(range(3, 42))  # exact: one shape per length
    assert widths["bf16"] == {padded_length(n, 8) for n in range(3, 42)} and len(widths["bf16"]) < len(widths["fp32"]) * 2 // 3
    cast = for_inference(load(), "bf16", "cpu")[0]
    padded = Predictor(cast, tokenizer, InferenceSettings(batch_size=1))
    exact = Predictor(cast, tokenizer, InferenceSettings(batch_size=1))
    exact.batching = dataclasses.replace(exact.batching, lengths_per_octave=None)
    assert padded.predict_ids(docs) == exact.predict_ids(docs)
