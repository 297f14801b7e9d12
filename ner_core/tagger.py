"""One interface over both architectures: build, load and save a tagger.

The rest of the code (training, tagging, evaluation) only sees a
``PreTrainedModel`` whose ``forward(input_ids, attention_mask, labels)``
returns ``TokenClassifierOutput`` and whose config carries ``id2label``;
which architecture sits behind it is chosen by one setting, ``arch``, and how
its outputs become labels by another, ``head`` (``"linear"`` or ``"crf"``,
saved in the config as ``tagger_head``; see ``ner_core.crf``).
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer, PreTrainedModel

from ner_core.casing import add_case_markers
from ner_core.crf import CRF, crf_of
from ner_core.labels import LabelMap
from ner_core.model import MODEL_TYPE, EncoderDecoderTagger, check_head, with_crf_head
from ner_core.model_files import HEAD_KEY, HEADS, PACKAGED_MODELS, resolve_model_path  # noqa: F401  (re-exported: the tagger's public names)

ARCHS = ("encoder-decoder", "encoder")


def build_tagger(
    arch: str,
    encoder: str | os.PathLike,
    decoder: str | os.PathLike | None = None,
    labels: LabelMap | None = None,
    vocab_size: int | None = None,
    decoder_attention: str = "bidirectional",
    head: str = "linear",
    **hf_kwargs: Any,
) -> PreTrainedModel:
    """A tagger ready to fine-tune.

    ``arch="encoder-decoder"``: ``encoder`` + ``decoder`` (the encoder again
    when ``decoder`` is None) through ``EncoderDecoderTagger``; a decoder saved
    with a token-classification head keeps it, and ``labels`` must then agree
    with it (or be None).
    ``arch="encoder"``: the baseline, ``AutoModelForTokenClassification`` on
    ``encoder`` alone.
    ``vocab_size``: the tokenizer's size; when tokens were added to it (case
    markers) the embeddings grow to match, new rows at the mean of the old.
    (Never shrunk: some checkpoints pad their embedding matrix past the vocabulary.)
    ``decoder_attention``: the encoder-decoder's decoder self-attention,
    ``"bidirectional"`` or ``"causal"`` (ignored for ``arch="encoder"``).
    ``head``: ``"linear"`` or ``"crf"`` (a new ``ner_core.crf.CRF`` over the classifier's
    outputs, for either architecture; the label names must be IOB2).
    """
    if arch == "encoder-decoder":
        hf_kwargs["decoder_attention"] = decoder_attention
    model = _build(arch, encoder, decoder, labels, check_head(head), **hf_kwargs)
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        resize_vocabulary(model, vocab_size)
    return model


def resize_vocabulary(model: PreTrainedModel, vocab_size: int) -> None:
    """Grow every token embedding the tagger has (the encoder-decoder's decoder reads input_ids too)."""
    parts = [model.encoder, model.decoder] if isinstance(model, EncoderDecoderTagger) else [model]
    for part in parts:
        part.resize_token_embeddings(vocab_size)


def _build(arch, encoder, decoder, labels, head, **hf_kwargs) -> PreTrainedModel:
    hf_kwargs.setdefault("trust_remote_code", False)
    id2label = dict(labels.id2label) if labels is not None else None
    encoder = resolve_model_path(encoder)
    decoder = resolve_model_path(decoder) if decoder is not None else None
    if arch == "encoder-decoder":
        return EncoderDecoderTagger.from_encoder_decoder_pretrained(
            encoder, decoder if decoder is not None else encoder, id2label=id2label, tagger_head=head, **hf_kwargs
        )
    if arch == "encoder":
        if decoder is not None:
            raise ValueError("arch='encoder' takes no decoder")
        label_kwargs = {} if labels is None else {"num_labels": labels.num_labels, "id2label": id2label, "label2id": labels.label2id}
        if head == "crf":
            config = AutoConfig.from_pretrained(encoder, **label_kwargs, **_hub_kwargs(hf_kwargs))
            setattr(config, HEAD_KEY, "crf")  # saved with the model: load_tagger reads it
            return _crf_class(config).from_pretrained(encoder, config=config, use_safetensors=True, **hf_kwargs)
        return AutoModelForTokenClassification.from_pretrained(encoder, use_safetensors=True, **label_kwargs, **hf_kwargs)
    raise ValueError(f"unknown arch {arch!r}; expected one of {ARCHS}")


def _hub_kwargs(hf_kwargs: dict) -> dict:
    """The ``from_pretrained`` arguments that say where files come from, for a config read first."""
    keys = ("revision", "cache_dir", "local_files_only", "token", "trust_remote_code")
    return {k: hf_kwargs[k] for k in keys if k in hf_kwargs}


def _crf_class(config) -> type[PreTrainedModel]:
    """The class that loads ``config``'s model with a CRF head: the encoder-decoder has it
    through its config, any other token classifier through ``with_crf_head``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

    if config.model_type == MODEL_TYPE:
        return EncoderDecoderTagger
    if type(config) not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING:
        raise ValueError(f"model_type {config.model_type!r} has no token-classification class to put a CRF on")
    return with_crf_head(MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[type(config)])


def load_tagger(path: str | os.PathLike, **hf_kwargs: Any) -> PreTrainedModel:
    """Load a saved tagger of either architecture and either head (the Auto class knows both
    architectures; an encoder-only config with ``tagger_head: "crf"`` takes ``with_crf_head``)."""
    hf_kwargs.setdefault("trust_remote_code", False)
    path = resolve_model_path(path)
    config = AutoConfig.from_pretrained(path, **_hub_kwargs(hf_kwargs))
    if getattr(config, HEAD_KEY, "linear") == "crf" and config.model_type != MODEL_TYPE:
        return _crf_class(config).from_pretrained(path, config=config, use_safetensors=True, **hf_kwargs)
    return AutoModelForTokenClassification.from_pretrained(path, use_safetensors=True, **hf_kwargs)


def load_tokenizer(path: str | os.PathLike, case_markers: bool = False, **hf_kwargs: Any):
    """The fast tokenizer saved with a model (word alignment needs ``word_ids``).

    ``case_markers=True`` adds the word-case marker tokens (``ner_core.casing``)
    for training a new tagger; a trained tagger's saved tokenizer already has them.
    """
    hf_kwargs.setdefault("trust_remote_code", False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path), use_fast=True, **hf_kwargs)
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: a fast tokenizer is required for word alignment")
    if case_markers:
        add_case_markers(tokenizer)
    return tokenizer


def replace_head(model: PreTrainedModel, labels: LabelMap) -> None:
    """Give a trained tagger a new, untrained classifier for ``labels`` (transfer to another label set).

    Why: a tagger fine-tuned on one corpus (CoNLL-2003's PER/LOC/ORG/MISC) is a better
    start for another (WNUT-2017's six types) than the bare encoder, but its head
    predicts the old labels; only the head is new, the rest keeps what it learnt.
    Initialised as HF initialises a fresh ``*ForTokenClassification`` head (normal,
    ``initializer_range``; zero bias), the config's label map replaced to match.
    """
    import torch
    from torch import nn

    old = getattr(model, "classifier", None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier to replace")
    config = model.config.decoder if isinstance(model, EncoderDecoderTagger) else model.config
    head = nn.Linear(old.in_features, labels.num_labels, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        head.weight.normal_(mean=0.0, std=getattr(config, "initializer_range", 0.02))
        head.bias.zero_()
    model.classifier = head
    if crf_of(model) is not None:  # the old CRF's transitions are between the old labels
        model.crf = CRF(labels).to(old.weight.device)
    if hasattr(model, "num_labels"):  # HF's *ForTokenClassification reads its own copy in the loss
        model.num_labels = labels.num_labels
    model.config.num_labels = labels.num_labels
    model.config.id2label = dict(labels.id2label)
    model.config.label2id = dict(labels.label2id)


def tagger_labels(model: PreTrainedModel) -> LabelMap:
    """The label map a tagger predicts, from its config."""
    return LabelMap.from_id2label(model.config.id2label)


def tagger_head(model: PreTrainedModel) -> str:
    """``"crf"`` or ``"linear"``: how the tagger's outputs become labels."""
    return "crf" if crf_of(model) is not None else "linear"


def tagger_arch(model: PreTrainedModel) -> str:
    return "encoder-decoder" if isinstance(model, EncoderDecoderTagger) else "encoder"


def max_positions(model: PreTrainedModel) -> int:
    """The longest input the model's position embeddings allow."""
    cfg = model.config.encoder if isinstance(model, EncoderDecoderTagger) else model.config
    limits = [getattr(cfg, "max_position_embeddings", None)]
    if isinstance(model, EncoderDecoderTagger):
        limits.append(getattr(model.config.decoder, "max_position_embeddings", None))
    limits = [x for x in limits if x]
    return min(limits) if limits else 512


def save_tagger(model: PreTrainedModel, tokenizer, output_dir: str | os.PathLike) -> None:
    """Model (safetensors), config with the label map, and tokenizer in one HF directory."""
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
