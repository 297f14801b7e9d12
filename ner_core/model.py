"""Encoder-decoder token tagger that keeps a saved token-classification head.

Why this exists: ``transformers.EncoderDecoderModel.from_encoder_decoder_pretrained``
loads the decoder with ``AutoModelForCausalLM``. Given a saved
``BertForTokenClassification`` (say a 3-way B/I/O head) it silently drops the
classifier and grows a vocabulary-sized LM head, so the "tagger" no longer tags.

``EncoderDecoderTagger`` instead runs

    encoder(input_ids) -> [projection when widths differ] -> decoder(input_ids,
    cross-attending to the encoder states) -> dropout -> classifier

in one forward pass (no generation: every position is tagged at once), and
``from_encoder_decoder_pretrained`` keeps a saved decoder's classifier weights,
``num_labels`` and ``id2label`` exactly. It is an ordinary ``PreTrainedModel``,
registered with ``AutoConfig``/``AutoModelForTokenClassification``, so
``save_pretrained``/``from_pretrained`` (safetensors) and the Auto classes work
without ``trust_remote_code``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTokenClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.modeling_outputs import TokenClassifierOutput

from ner_core.alignment import IGNORE_INDEX
from ner_core.crf import CRF, allowed_transitions, crf_loss
from ner_core.labels import LabelMismatchError, resolve_head_labels
from ner_core.model_files import ENCODER_DECODER_TYPE, HEAD_KEY, HEADS

MODEL_TYPE = ENCODER_DECODER_TYPE  # one place, readable without torch (ner_core.model_files)
DECODER_ATTENTION = ("bidirectional", "causal")
# What a saved config without ``decoder_attention`` was trained with: HF's BERT
# decoder is causal, and models saved before the setting existed must keep
# loading exactly as they were trained.
LEGACY_DECODER_ATTENTION = "causal"


class TaggerConfigError(ValueError):
    """An encoder/decoder/label combination that cannot make a tagger.

    Raised before any weights are read, so a bad combination costs seconds,
    not a multi-gigabyte download.
    """


@strict
class EncoderDecoderTaggerConfig(PreTrainedConfig):
    """Composite config: the encoder's and the decoder's own configs plus the label map.

    The decoder sub-config always has ``add_cross_attention=True`` (and is
    built with ``is_decoder=True``, which HF requires for cross-attention);
    ``num_labels``/``id2label``/``label2id`` live at the top level, where HF
    token-classification code looks for them.

    ``tagger_head``: ``"linear"`` (each position's label from its own logits) or ``"crf"``
    (a ``ner_core.crf.CRF`` over the words; see ``forward``). Saved configs without it are linear.

    ``decoder_attention`` chooses the decoder's self-attention:
    ``"bidirectional"`` (the default for new models: a tagger generates nothing,
    so hiding the right context from each token is a handicap with no benefit)
    or ``"causal"`` (HF's decoder as it is). A saved config without the key
    predates the setting and loads as ``"causal"``, the way it was trained.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {
        "encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "decoder": SubConfigSpec(
            config_class=AutoConfig,
            model_type="bert",
            init_kwargs={"is_decoder": True, "add_cross_attention": True},
        ),
    }

    encoder: PreTrainedConfig | dict | None = None
    decoder: PreTrainedConfig | dict | None = None
    classifier_dropout: float | None = None
    pad_token_id: int | None = None
    decoder_attention: str = "bidirectional"
    tagger_head: str = "linear"

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_head(self.tagger_head)
        if self.decoder_attention not in DECODER_ATTENTION:
            raise TaggerConfigError(
                f"decoder_attention must be one of {DECODER_ATTENTION}, got {self.decoder_attention!r}"
            )
        if self.decoder is not None:
            self.decoder.is_decoder = True
            self.decoder.add_cross_attention = True

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        if "decoder_attention" not in config_dict and "decoder_attention" not in kwargs:
            config_dict = {**config_dict, "decoder_attention": LEGACY_DECODER_ATTENTION}
        return super().from_dict(config_dict, **kwargs)


def _make_self_attention_bidirectional(decoder: PreTrainedModel) -> None:
    """Let every decoder token attend to its right context too; cross-attention stays.

    HF keeps the causal choice in two places, and both must change:
    ``config.is_decoder`` makes the model build a causal mask, and each
    self-attention module's ``is_causal`` is what SDPA and flash attention
    read when no mask is passed (a batch with no padding). The layers were
    built with ``is_decoder=True`` and keep their own ``is_decoder``
    attribute, which is what runs their cross-attention, so flipping the
    config afterwards changes only the masking. (The config flag goes back
    to True on load, in ``EncoderDecoderTaggerConfig.__post_init__``, so the
    layers are again built with cross-attention.)
    """
    decoder.config.is_decoder = False
    decoder.config.use_cache = False
    for name, module in decoder.named_modules():
        if hasattr(module, "is_causal") and "crossattention" not in name.replace("_", ""):
            module.is_causal = False


def _drop_pooler(model: nn.Module) -> None:
    """BERT-style base models carry a pooler the tagger never uses.

    Unused parameters make DistributedDataParallel fail ("parameters that were
    not used in producing loss"), so they are removed rather than carried.
    """
    if getattr(model, "pooler", None) is not None:
        model.pooler = None


def check_head(head: str) -> str:
    if head not in HEADS:
        raise TaggerConfigError(f"{HEAD_KEY} must be one of {HEADS}, got {head!r}")
    return head


def _new_crf(config: PreTrainedConfig) -> CRF:
    """The CRF over ``config``'s labels; label names it cannot constrain are a TaggerConfigError."""
    try:
        return CRF(config.id2label)
    except ValueError as exc:
        raise TaggerConfigError(str(exc)) from None


def _init_crf(module: CRF) -> None:
    """A new CRF head: zero scores, so the classifier's emissions decide at first, and the masks.

    Through ``transformers.initialization``, which leaves alone what a checkpoint filled in.
    """
    allowed, allowed_start = allowed_transitions(module.label_names)
    for p in (module.transitions, module.start, module.end):
        init.zeros_(p)
    init.copy_(module.allowed, allowed)
    init.copy_(module.allowed_start, allowed_start)


class EncoderDecoderTagger(PreTrainedModel):
    """Token tagger: pretrained encoder + cross-attending decoder + ``nn.Linear`` head.

    ``model.classifier`` is ``nn.Linear(decoder_hidden, num_labels)``; with
    ``config.tagger_head == "crf"``, ``model.crf`` is a ``ner_core.crf.CRF`` over its outputs.
    """

    config_class = EncoderDecoderTaggerConfig
    config: EncoderDecoderTaggerConfig
    base_model_prefix = "encoder_decoder_tagger"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    def __init__(self, config: EncoderDecoderTaggerConfig):
        if config.encoder is None or config.decoder is None:
            raise TaggerConfigError("EncoderDecoderTaggerConfig needs both an encoder and a decoder config")
        _check_label_map(config.num_labels, config.id2label)
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder)
        self.decoder = AutoModel.from_config(config.decoder)
        _drop_pooler(self.encoder)
        _drop_pooler(self.decoder)
        # Share the sub-config objects so later edits (attn implementation,
        # dropout) are seen by both the composite and the parts.
        self.encoder.config = self.config.encoder
        self.decoder.config = self.config.decoder
        if config.decoder_attention == "bidirectional":
            _make_self_attention_bidirectional(self.decoder)

        enc_hidden = config.encoder.hidden_size if hasattr(config.encoder, "hidden_size") else config.encoder.dim
        dec_hidden = config.decoder.hidden_size
        self.enc_to_dec_proj = nn.Linear(enc_hidden, dec_hidden) if enc_hidden != dec_hidden else None

        dropout = config.classifier_dropout
        if dropout is None:
            dropout = getattr(config.decoder, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(dec_hidden, config.num_labels)
        self.crf = _new_crf(config) if config.tagger_head == "crf" else None
        self.post_init()

    def _init_weights(self, module):
        # Encoder and decoder parts are initialised the way their own classes
        # would; only the projection and head use the generic scheme.
        if isinstance(module, CRF):
            _init_crf(module)
        elif any(module is m for m in self.encoder.modules()):
            self.encoder._init_weights(module)
        elif any(module is m for m in self.decoder.modules()):
            self.decoder._init_weights(module)
        else:
            super()._init_weights(module)

    def get_input_embeddings(self):
        return self.encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        """Tag every position of ``input_ids`` in one pass.

        The decoder reads the same tokens as the encoder (hence the shared
        vocabulary requirement) and attends to the encoder's states through
        cross-attention; ``labels`` equal to -100 are ignored by the loss. With a CRF head
        the loss is ``ner_core.crf.crf_loss`` (the labelled positions, one per word, form
        each window's sequence) and ``logits`` are its emissions.
        """
        if input_ids is None:
            raise ValueError("input_ids is required")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder_states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.enc_to_dec_proj is not None:
            encoder_states = self.enc_to_dec_proj(encoder_states)
        decoder_states = self.decode(input_ids, attention_mask, encoder_states)
        logits = self.classifier(self.dropout(decoder_states))
        loss = None
        if labels is not None and self.crf is not None:
            loss = crf_loss(self.crf, logits, labels)
        elif labels is not None:
            loss = nn.functional.cross_entropy(
                logits.view(-1, self.config.num_labels), labels.view(-1), ignore_index=IGNORE_INDEX
            )
        return TokenClassifierOutput(loss=loss, logits=logits)

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder_states: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden states for ``input_ids``, cross-attending to ``encoder_states``.

        Apart from ``forward`` so the decoder's own attention pattern can be
        looked at with the encoder's output held fixed.
        """
        return self.decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=encoder_states,
            encoder_attention_mask=attention_mask,
            use_cache=False,
        ).last_hidden_state

    @classmethod
    def from_encoder_decoder_pretrained(
        cls,
        encoder_path: str | os.PathLike,
        decoder_path: str | os.PathLike,
        num_labels: int | None = None,
        id2label: Mapping[int, str] | None = None,
        decoder_attention: str = "bidirectional",
        tagger_head: str = "linear",
        **kwargs: Any,
    ) -> "EncoderDecoderTagger":
        """Combine a pretrained encoder with a pretrained BERT-family decoder.

        ``decoder_path`` holding a ``*ForTokenClassification`` checkpoint: its
        classifier weights and ``num_labels`` are kept exactly. Its label names
        too, except HF's placeholders ``LABEL_k`` (a head saved with
        ``num_labels=3`` and no names), which take the names of an ``id2label``
        of the same size (``run_ner.py``'s convention; see
        ``ner_core.labels.resolve_head_labels``); a named head and a different
        label set, or a different size, is an error. Otherwise ``num_labels``
        and/or ``id2label`` are required and a fresh head is made.
        ``decoder_attention``: ``"bidirectional"`` (default) or ``"causal"``
        self-attention in the decoder (see ``EncoderDecoderTaggerConfig``).
        ``tagger_head``: ``"linear"`` (default) or ``"crf"``, a new CRF over the head's outputs.

        ``kwargs`` go to each ``from_pretrained`` call (``revision``,
        ``cache_dir``, ``local_files_only``...). ``trust_remote_code`` stays
        off unless passed explicitly; weights are read from safetensors.
        All validation happens on the configs, before any weights load.
        """
        kwargs.setdefault("trust_remote_code", False)
        hub_kwargs = {k: kwargs[k] for k in ("revision", "cache_dir", "local_files_only", "token", "trust_remote_code") if k in kwargs}
        enc_cfg, dec_cfg = _checked_configs(encoder_path, decoder_path, hub_kwargs)
        decoder_is_tagger = is_token_classification_config(dec_cfg)
        num_labels, id2label = _resolve_labels(dec_cfg, decoder_is_tagger, num_labels, id2label, decoder_path)

        config = EncoderDecoderTaggerConfig(
            encoder=enc_cfg.to_dict(),
            decoder=dec_cfg.to_dict(),
            num_labels=num_labels,
            id2label=dict(id2label),
            label2id={label: i for i, label in id2label.items()},
            pad_token_id=getattr(enc_cfg, "pad_token_id", None),
            decoder_attention=decoder_attention,
            tagger_head=check_head(tagger_head),
        )
        # The decoder config must not keep the saved head's task fields in a
        # way that confuses readers: the composite owns the label map.
        model = cls(config)

        load_kwargs = dict(hub_kwargs, use_safetensors=kwargs.get("use_safetensors", True))
        encoder = AutoModel.from_pretrained(encoder_path, **load_kwargs)
        _copy_weights(model.encoder, encoder, "encoder", encoder_path)
        del encoder

        if decoder_is_tagger:
            saved = AutoModelForTokenClassification.from_pretrained(decoder_path, **load_kwargs)
            head = getattr(saved, "classifier", None)
            if not isinstance(head, nn.Linear) or head.out_features != num_labels:
                raise TaggerConfigError(
                    f"{decoder_path}: token-classification head is not an nn.Linear with {num_labels} outputs"
                )
            _copy_weights(model.decoder, saved.base_model, "decoder", decoder_path, new_ok=("crossattention",))
            with torch.no_grad():
                model.classifier.weight.copy_(head.weight)
                model.classifier.bias.copy_(head.bias)
            del saved
        else:
            decoder = AutoModel.from_pretrained(decoder_path, **load_kwargs)
            _copy_weights(model.decoder, decoder, "decoder", decoder_path, new_ok=("crossattention",))
            del decoder
        model.eval()
        return model


def is_token_classification_config(config: PreTrainedConfig) -> bool:
    """A checkpoint saved from a ``*ForTokenClassification`` class carries a tagging head."""
    return any(a.endswith("ForTokenClassification") for a in (config.architectures or []))


def _check_label_map(num_labels: int, id2label: Mapping[int, str] | None) -> None:
    if id2label is None:
        return
    if len(id2label) != num_labels:
        raise TaggerConfigError(
            f"label map has {len(id2label)} labels but num_labels={num_labels}: {dict(id2label)}"
        )
    keys = sorted(int(k) for k in id2label)
    if keys != list(range(num_labels)):
        raise TaggerConfigError(f"label ids must be 0..{num_labels - 1}, got {keys}")


def _resolve_labels(dec_cfg, decoder_is_tagger, num_labels, id2label, decoder_path):
    if id2label is not None:
        id2label = {int(k): v for k, v in dict(id2label).items()}
        if num_labels is None:
            num_labels = len(id2label)
        _check_label_map(num_labels, id2label)
    if decoder_is_tagger:
        saved = {int(k): v for k, v in dec_cfg.id2label.items()}
        if num_labels is not None and num_labels != dec_cfg.num_labels:
            raise TaggerConfigError(
                f"{decoder_path} is a token-classification checkpoint with num_labels={dec_cfg.num_labels}; "
                f"num_labels={num_labels} was asked for. Drop the argument to keep the saved head, "
                "or pass a decoder without a head to get a fresh one."
            )
        if id2label is None:
            return dec_cfg.num_labels, saved
        # run_ner.py's convention: unnamed outputs (LABEL_k) take the names asked
        # for; named ones keep their mapping, and the set asked for must match it.
        try:
            kept = resolve_head_labels(saved, [id2label[i] for i in sorted(id2label)], f"decoder {decoder_path}")
        except LabelMismatchError as exc:
            raise TaggerConfigError(str(exc)) from None
        return kept.num_labels, kept.id2label
    if num_labels is None:
        raise TaggerConfigError(
            f"{decoder_path} has no token-classification head: pass num_labels or id2label for a fresh one"
        )
    if id2label is None:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    return num_labels, id2label


def _vocab_of(path) -> dict[str, int] | None:
    """The tokenizer vocabulary stored beside a checkpoint, read without loading weights."""
    path = os.fspath(path)
    tok_json = os.path.join(path, "tokenizer.json")
    if os.path.isfile(tok_json):
        with open(tok_json, encoding="utf-8") as f:
            vocab = json.load(f).get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            return vocab
    vocab_txt = os.path.join(path, "vocab.txt")
    if os.path.isfile(vocab_txt):
        with open(vocab_txt, encoding="utf-8") as f:
            return {line.rstrip("\n"): i for i, line in enumerate(f)}
    return None


def check_encoder_decoder(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike, **hub_kwargs: Any) -> None:
    """Whether ``encoder_path`` and ``decoder_path`` can make one tagger: one vocabulary, and a
    decoder that takes cross-attention. ``TaggerConfigError`` says why not.

    The checks ``from_encoder_decoder_pretrained`` makes, from configs and tokenizer files
    only: the training driver runs them so that a pair that cannot work is one line before
    any Ray work, not a traceback from every training worker.
    """
    hub_kwargs.setdefault("trust_remote_code", False)
    _checked_configs(encoder_path, decoder_path, hub_kwargs)


def _checked_configs(encoder_path, decoder_path, hub_kwargs: dict):
    """Both configs, after the checks that need no weights."""
    enc_cfg = AutoConfig.from_pretrained(encoder_path, **hub_kwargs)
    dec_cfg = AutoConfig.from_pretrained(decoder_path, **hub_kwargs)
    for part, path, cfg in (("encoder", encoder_path, enc_cfg), ("decoder", decoder_path, dec_cfg)):
        if getattr(cfg, "model_type", None) == MODEL_TYPE:
            raise TaggerConfigError(
                f"{part} {path} is a whole encoder-decoder tagger, not one half of one; "
                "to fine-tune it, start from it with --init-from (jobs.train)"
            )
    _check_same_vocabulary(enc_cfg, dec_cfg, encoder_path, decoder_path)
    _check_cross_attention(dec_cfg, decoder_path)
    return enc_cfg, dec_cfg


def _check_same_vocabulary(enc_cfg, dec_cfg, encoder_path, decoder_path) -> None:
    """The decoder reads the encoder's token ids, so both must share one vocabulary."""
    ev, dv = getattr(enc_cfg, "vocab_size", None), getattr(dec_cfg, "vocab_size", None)
    if ev != dv:
        raise TaggerConfigError(
            f"encoder {encoder_path} has vocab_size={ev} but decoder {decoder_path} has vocab_size={dv}: "
            "the decoder reads the encoder's token ids, so both need the same tokenizer"
        )
    if os.path.isdir(encoder_path) and os.path.isdir(decoder_path):
        e_vocab, d_vocab = _vocab_of(encoder_path), _vocab_of(decoder_path)
        if e_vocab is not None and d_vocab is not None and e_vocab != d_vocab:
            differing = sorted(set(e_vocab.items()) ^ set(d_vocab.items()))[:3]
            raise TaggerConfigError(
                f"encoder {encoder_path} and decoder {decoder_path} ship different tokenizer vocabularies "
                f"(e.g. {differing}): the decoder reads the encoder's token ids"
            )


def _check_cross_attention(dec_cfg, decoder_path) -> None:
    """Build the decoder on the meta device (no memory, no weights) and look for cross-attention."""
    probe_cfg = dec_cfg.__class__.from_dict(dec_cfg.to_dict())
    probe_cfg.is_decoder = True
    probe_cfg.add_cross_attention = True
    try:
        with torch.device("meta"):
            probe = AutoModel.from_config(probe_cfg)
    except Exception as exc:  # an unknown/unsupported type raises many kinds of errors
        raise TaggerConfigError(
            f"decoder {decoder_path} (model_type={dec_cfg.model_type}) cannot be built as a cross-attention decoder: {exc}"
        ) from exc
    has_cross = any("crossattention" in name.replace("_", "") for name, _ in probe.named_modules())
    if not has_cross:
        raise TaggerConfigError(
            f"decoder {decoder_path} (model_type={dec_cfg.model_type}) cannot take cross-attention; "
            "use a BERT-family decoder (bert, roberta, electra, ...)"
        )


def _copy_weights(target: nn.Module, source: nn.Module, part: str, path, new_ok: tuple[str, ...] = ()) -> None:
    """Copy ``source``'s weights into ``target``, failing loudly on anything unexpected.

    Only parameters whose names contain one of ``new_ok`` (the decoder's new
    cross-attention) may be missing from the source; the source's pooler is
    dropped on purpose.
    """
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("pooler.")}
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not any(tag in k for tag in new_ok)]
    if missing or result.unexpected_keys:
        raise TaggerConfigError(
            f"{part} weights from {path} do not fit: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )


class _CRFHead:
    """Mixed in before an HF ``*ForTokenClassification`` class: the same model plus ``self.crf``.

    Why a subclass, not a wrapper: the weights keep the base class's names and its config
    stays the base's own (with ``tagger_head: "crf"`` added), so everything that reads an
    encoder-only tagger (embeddings, ``classifier``, position limits, ONNX export) is unchanged,
    and only ``crf.*`` is new in the safetensors file. ``ner_core.tagger.load_tagger`` picks
    this class from the config; a config without the key loads as before.
    """

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        self.crf = _new_crf(config)  # after the base's post_init: a new one is zeros already (CRF.__init__)

    def _init_weights(self, module):
        if isinstance(module, CRF):
            _init_crf(module)
        else:
            super()._init_weights(module)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """The base model's logits as emissions; with ``labels``, ``ner_core.crf.crf_loss``."""
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if labels is not None:
            out.loss = crf_loss(self.crf, out.logits, labels)
        return out


_CRF_CLASSES: dict[type, type] = {}


def with_crf_head(base: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """``base`` (e.g. ``DistilBertForTokenClassification``) with a CRF head; one class per base.

    Named ``<Base minus ForTokenClassification>WithCRFForTokenClassification`` so the saved
    ``architectures`` still reads as a token classifier (``is_token_classification_config``);
    it lives in the base's module so HF's per-module checks (attention backends) read the
    base's source.
    """
    if issubclass(base, (EncoderDecoderTagger, _CRFHead)):
        raise TypeError(f"{base.__name__} has its CRF head through its config (tagger_head), not a subclass")
    if base not in _CRF_CLASSES:
        stem = base.__name__.removesuffix("ForTokenClassification")
        name = f"{stem}WithCRFForTokenClassification"
        _CRF_CLASSES[base] = type(name, (_CRFHead, base), {"__module__": base.__module__, "__qualname__": name})
    return _CRF_CLASSES[base]


AutoConfig.register(MODEL_TYPE, EncoderDecoderTaggerConfig, exist_ok=True)
AutoModelForTokenClassification.register(EncoderDecoderTaggerConfig, EncoderDecoderTagger, exist_ok=True)
