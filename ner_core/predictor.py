"""The one predictor: a saved tagger's words in, labels, scores and scored entities out.

Training's dev scoring, ``jobs.evaluate``, the bulk-tagging actors and the HTTP server all
build a ``Predictor`` the same way and call it the same way, so none of them works out a
window setting or a decoding rule of its own. Three stages, as in HF's pipelines:

1. ``WindowEncoder.encode`` (tokenizer only, so Ray Data tasks can run it without the model):
   words -> subword windows, as flat arrays (``ner_core.alignment.WindowArrays``).
2. ``Predictor.word_probabilities``: length-sorted forward passes, each batch padded into
   one array; each word's label distribution (softmax of logits / temperature) is read at
   its first subword in the window where it has the most context.
3. ``ner_core.decoding.decode_probabilities``: labels, scores and entities, as arrays.

The window length, stride, document context and temperature are the model's own
(``inference.json``, written by ``jobs.train``); an explicit setting overrides one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ner_core.alignment import DEFAULT_STRIDE, WindowArrays, encode_batch, fitted_stride, special_token_count
from ner_core.decoding import Decoded, LabelTable, decode_probabilities, labels_of, word_spans
from ner_core.documents import Document
from ner_core.inference import InferenceSettings
from ner_core.labels import LabelMap

INFERENCE_FILE = "inference.json"
SAVED_SETTINGS = ("max_length", "stride", "context_length", "temperature")


def saved_settings(model_dir: str) -> dict:
    """The inference settings saved with a model: ``inference.json``, else (models trained before it
    existed) the window settings of its ``metrics.json``; empty for a model from elsewhere."""
    path = os.path.join(model_dir, INFERENCE_FILE)
    if os.path.isfile(path):
        with open(path) as fh:
            return {k: v for k, v in json.load(fh).items() if k in SAVED_SETTINGS and v is not None}
    path = os.path.join(model_dir, "metrics.json")
    if os.path.isfile(path):
        with open(path) as fh:
            config = json.load(fh).get("config", {})
        return {k: config[k] for k in ("max_length", "stride", "context_length") if config.get(k) is not None}
    return {}


def write_settings(model_dir: str, settings: InferenceSettings) -> str:
    """Save the settings a model is to be run with (``saved_settings`` reads them back)."""
    path = os.path.join(model_dir, INFERENCE_FILE)
    with open(path, "w") as fh:
        json.dump({k: getattr(settings, k) for k in SAVED_SETTINGS}, fh, indent=1)
    return path


def resolve_settings(
    saved: dict,
    *,
    specials: int,
    max_positions: int | None = None,
    overrides: dict | None = None,
) -> tuple[InferenceSettings, list[str]]:
    """The settings a run uses, and one line per value that differs from what was asked or saved.

    ``overrides``: values the user set (None: not set). The window is clamped to the model's
    positions. An explicit stride must be shorter than the window's room for words; a saved or
    default one that is not is fitted to half of it (and said).
    """
    asked = {k: v for k, v in (overrides or {}).items() if v is not None}
    values = {**saved, **asked}
    notes: list[str] = []
    max_length = values.get("max_length", InferenceSettings.max_length)
    if max_positions and max_length > max_positions:
        notes.append(f"max_length {max_length} is beyond the model's {max_positions} positions: using {max_positions}")
        max_length = max_positions
    room = max_length - specials
    if room < 1:
        raise ValueError(f"max_length {max_length} leaves no room beside the model's {specials} special tokens")
    stride = values.get("stride", DEFAULT_STRIDE)
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    if stride >= room:
        if "stride" in asked:
            raise ValueError(f"stride {stride} is not shorter than the window ({room} subwords of max_length {max_length}): pass a smaller --stride")
        notes.append(f"stride {stride} is not shorter than the window ({room} subwords): using {fitted_stride(room, stride)}")
        stride = fitted_stride(room, stride)
    temperature = float(values.get("temperature", 1.0))
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    fields = {k: v for k, v in values.items() if k in InferenceSettings.__dataclass_fields__}
    settings = replace(InferenceSettings(), **{**fields, "max_length": max_length, "stride": stride, "temperature": temperature})
    return settings, notes


class WindowEncoder:
    """Stage 1: words -> windows, with a model's tokenizer and window settings (no model needed)."""

    def __init__(self, tokenizer, settings: InferenceSettings):
        self.tokenizer = tokenizer
        self.settings = settings

    def encode(
        self, docs: Sequence[Sequence[str]], contexts: Sequence[tuple[Sequence[str], Sequence[str]] | None] | None = None
    ) -> WindowArrays:
        s = self.settings
        per_doc = encode_batch(
            self.tokenizer, docs, max_length=s.max_length, stride=s.stride, contexts=contexts, context_length=s.context_length
        )
        return WindowArrays.from_windows(per_doc, [len(d) for d in docs])


@dataclass
class TaggedDocument:
    """One document's tagging: what a ``jobs.tag`` row and an HTTP response carry."""

    tokens: list[str]
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    entities: list[dict] = field(default_factory=list)  # type, start, end, text, score
    probs: list[list[float]] | None = None  # per token, every label's probability (``all_scores``)
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"error": self.error}
        out = {"tokens": self.tokens, "labels": self.labels, "scores": self.scores, "entities": self.entities}
        if self.probs is not None:
            out["all_scores"] = self.probs
        return out


class Predictor:
    """A model, its tokenizer, label map and inference settings: see the module docstring."""

    def __init__(self, model, tokenizer, settings: InferenceSettings = InferenceSettings(), *, device=None, autocast_dtype=None):
        import torch

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings
        self.encoder = WindowEncoder(tokenizer, settings)
        # ``model.device``: an HF model, or a ``ner_core.runtime`` engine (which has no parameters)
        self.device = torch.device(device) if device is not None else torch.device(model.device)
        self.model.to(self.device)
        self.autocast_dtype = autocast_dtype
        self.labels = LabelMap.from_id2label(model.config.id2label)
        from ner_core.crf import crf_of

        self.crf = crf_of(model)  # a CRF head decodes each window's words by Viterbi
        self.table = LabelTable.of(self.labels)
        self.batching = settings.batching(self.device.type, autocast_dtype or _weights_dtype(self.model))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    @classmethod
    def load(
        cls,
        model_dir: str,
        *,
        runtime: str = "torch",
        mixed_precision: str = "auto",
        device: str | None = None,
        threads: int | None = None,
        tokenizer=None,
        **overrides,
    ) -> "Predictor":
        """The saved tagger at ``model_dir`` with its own inference settings; ``overrides`` (None: keep) win."""
        import torch

        from ner_core.model_files import read_saved_model, resolve_model_path
        from ner_core.precision import for_inference
        from ner_core.runtime import load_runtime
        from ner_core.tagger import load_tokenizer

        path = resolve_model_path(model_dir)
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
        settings, _ = resolve_settings(
            saved_settings(path), specials=special_token_count(tokenizer), max_positions=read_saved_model(path).max_positions, overrides=overrides
        )
        device = device or ("cuda" if torch.cuda.is_available() and runtime == "torch" else "cpu")
        engine = load_runtime(path, runtime, threads=threads or torch.get_num_threads())
        engine, dtype = for_inference(engine, mixed_precision, device)
        return cls(engine, tokenizer, settings, device=device, autocast_dtype=dtype)

    def _autocast(self):
        import torch

        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ stage 2: the model

    def word_probabilities(self, windows: WindowArrays, on_batch: Callable[[int, int], None] | None = None, **kwargs) -> np.ndarray:
        """``[words, labels]``: each word's label distribution (see ``word_outputs``)."""
        return self.word_outputs(windows, on_batch, **kwargs)[0]

    def word_outputs(
        self, windows: WindowArrays, on_batch: Callable[[int, int], None] | None = None, *, temperature: float | None = None, log: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``([words, labels], [words] or None)``: each word's label distribution (``log``: its logarithm),
        the words of all documents in order, and for a CRF head each word's Viterbi label (None: argmax).

        The distribution is the softmax of the logits (a CRF: of the log marginals) divided by
        ``temperature`` (default: the model's own).
        """
        import torch

        chosen_pos, chosen_word = windows.best_positions()
        probs = np.zeros((int(windows.num_words.sum()), self.labels.num_labels), np.float32)
        viterbi = np.zeros(len(probs), np.int64) if self.crf is not None else None
        if not len(windows):
            return probs, viterbi
        starts = windows.word_starts() if self.crf is not None else None
        lengths = windows.lengths()
        # the chosen positions grouped by window, so a batch finds its own
        by_window = np.argsort(windows.window_of(chosen_pos), kind="stable")
        chosen_pos, chosen_word = chosen_pos[by_window], chosen_word[by_window]
        per_window = np.bincount(windows.window_of(chosen_pos), minlength=len(windows))
        chosen_start = np.concatenate(([0], np.cumsum(per_window)))
        temperature = float(self.settings.temperature if temperature is None else temperature)
        normalise = torch.log_softmax if log else torch.softmax
        done = 0
        with torch.inference_mode(), self._autocast():
            for batch in self.batching.batches(lengths.tolist()):
                k = np.asarray(batch, np.int64)
                n = lengths[k]
                width = self.batching.width(int(n.max()))
                src = _ranges(windows.offsets[k], n)
                rows = np.repeat(np.arange(len(k)), n)
                cols = src - np.repeat(windows.offsets[k], n)
                ids = np.full((len(k), width), self.pad_id, np.int64)
                ids[rows, cols] = windows.input_ids[src]
                mask = np.zeros((len(k), width), np.int64)
                mask[rows, cols] = 1
                logits = self.model(input_ids=torch.from_numpy(ids).to(self.device), attention_mask=torch.from_numpy(mask).to(self.device)).logits
                picked = _ranges(chosen_start[k], per_window[k])
                prow = torch.from_numpy(np.repeat(np.arange(len(k)), per_window[k])).to(self.device)
                pcol = torch.from_numpy(chosen_pos[picked] - np.repeat(windows.offsets[k], per_window[k])).to(self.device)
                if self.crf is None:
                    scores = logits[prow, pcol].float()
                else:
                    scores, best = self._crf_words(logits, starts[src], rows, cols, prow, pcol)
                    viterbi[chosen_word[picked]] = best.cpu().numpy()
                probs[chosen_word[picked]] = normalise(scores / temperature, dim=-1).cpu().numpy()
                done += len(k)
                if on_batch is not None:
                    on_batch(done, len(windows))
        return probs, viterbi

    def _crf_words(self, logits, is_start: np.ndarray, rows, cols, prow, pcol):
        """(log marginals, Viterbi labels) at the chosen positions: the CRF runs over each window's words."""
        import torch

        from ner_core.crf import compact

        starts = torch.zeros(logits.shape[:2], dtype=torch.bool, device=logits.device)
        starts[torch.from_numpy(rows[is_start]).to(logits.device), torch.from_numpy(cols[is_start]).to(logits.device)] = True
        emissions, mask, _ = compact(logits.float(), starts)
        rank = (starts.cumsum(1) - 1)[prow, pcol]  # each chosen position's place among its window's words
        marginals = self.crf.marginals(emissions, mask)[prow, rank]
        return marginals.clamp_min(1e-30).log(), self.crf.viterbi(emissions, mask)[prow, rank]

    # ------------------------------------------------------------------ callers' entry points

    def predict_arrays(
        self,
        docs: Sequence[Sequence[str]],
        contexts: Sequence[tuple[Sequence[str], Sequence[str]] | None] | None = None,
        on_batch: Callable[[int, int], None] | None = None,
        min_score: float | None = None,
    ) -> tuple[Decoded, np.ndarray]:
        """Decoded labels, scores and entities of word lists, and their words' label probabilities."""
        windows = self.encoder.encode(docs, contexts)
        probs, viterbi = self.word_outputs(windows, on_batch)
        return decode_probabilities(probs, windows.word_offsets(), self.table, min_score, viterbi), probs

    def predict(self, docs, contexts=None, on_batch=None) -> list[list[str]]:
        """Each document's IOB2 labels (always a valid sequence): what scoring compares."""
        return labels_of(self.predict_arrays(docs, contexts, on_batch)[0], self.table)

    def predict_ids(self, docs, contexts=None) -> list[list[int]]:
        """Each word's label id before any repair: the most probable (a CRF: Viterbi's), the model's own choice."""
        windows = self.encoder.encode(docs, contexts)
        probs, viterbi = self.word_outputs(windows)
        ids = (probs.argmax(-1) if viterbi is None else viterbi).tolist()
        o = windows.word_offsets().tolist()
        return [ids[o[d] : o[d + 1]] for d in range(len(docs))]

    def tag_documents(self, docs: Sequence[Document], min_score: float | None = None, all_scores: bool = False) -> list[TaggedDocument]:
        """Each document tagged; one that breaks the model gets its ``error`` and the others are still tagged."""
        try:
            return self._tag(docs, min_score, all_scores)
        except Exception:  # noqa: BLE001 - find the document that breaks the batch
            out = []
            for doc in docs:
                try:
                    out.extend(self._tag([doc], min_score, all_scores))
                except Exception as exc:  # noqa: BLE001
                    out.append(TaggedDocument(list(doc.words), error=f"tagging failed: {type(exc).__name__}: {exc}"))
            return out

    def _tag(self, docs: Sequence[Document], min_score, all_scores) -> list[TaggedDocument]:
        decoded, probs = self.predict_arrays([d.words for d in docs], min_score=min_score)
        labels = labels_of(decoded, self.table)
        o = decoded.word_offsets.tolist()
        out = []
        for d, doc in enumerate(docs):
            spans = word_spans(decoded, d)
            out.append(
                TaggedDocument(
                    list(doc.words),
                    labels[d],
                    decoded.scores[o[d] : o[d + 1]].tolist(),
                    entity_dicts(doc, spans, self.table.types),
                    probs[o[d] : o[d + 1]].tolist() if all_scores else None,
                )
            )
        return out

    def describe(self) -> dict:
        """Labels and settings, for manifests, reports and ``GET /v1/model``."""
        return {"labels": list(self.labels.labels), "settings": asdict(self.settings)}


def entity_dicts(doc: Document, spans, types: Sequence[str]) -> list[dict]:
    """``(type index, start word, end word, score)`` spans as output records: character offsets into
    the text for raw text, token indices ``[start, end)`` for pre-split words."""
    out = []
    for t, start, end, score in spans:
        if doc.text is not None and doc.offsets is not None:
            a, b = doc.offsets[start].start, doc.offsets[end - 1].end
            out.append({"type": types[t], "start": a, "end": b, "text": doc.text[a:b], "score": score})
        else:
            out.append({"type": types[t], "start": start, "end": end, "text": " ".join(doc.words[start:end]), "score": score})
    return out


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``concatenate([arange(s, s + c) for s, c in zip(starts, counts)])``, without the loop."""
    counts = np.asarray(counts, np.int64)
    total = int(counts.sum())
    if not total:
        return np.zeros(0, np.int64)
    ends = np.cumsum(counts)
    return np.arange(total, dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - (ends - counts), counts)


def _weights_dtype(model):
    """The dtype of a torch model's weights; None for other engines (ONNX Runtime)."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.dtype if first is not None else None
