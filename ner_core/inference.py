"""Batched word-level tagging with any tagger: windows in, one IOB label per word out.

Shared by the training job's dev evaluation, ``jobs.evaluate`` and the bulk
tagging actors, so the three can never disagree about how a prediction is
made. Pure torch + tokenizer; no Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ner_core.alignment import Window, encode_batch, merge_window_predictions, pad_windows, padded_length
from ner_core.labels import LabelMap, repair


@dataclass(frozen=True)
class InferenceSettings:
    """How windows are cut and batched at prediction time."""

    max_length: int = 256
    stride: int = 64
    batch_size: int = 64  # windows per forward pass, at most (see ``length_batches``)
    # Also positions per forward pass (windows x padded length), at most, so short windows go
    # in larger batches and long ones in smaller. None: the device's default, below.
    batch_tokens: int | None = None
    gpu_batch_tokens: int = 8192
    # On CPU, 2,048 keeps CoNLL-length sentences (up to 32 subwords) in batches of 64 and
    # splits the end of each call's length sort, its longest windows, into smaller batches:
    # the last batch of each 2,048-row call, 64 windows padded to the longest, held two
    # thirds of the padding. fp32 forward passes over 20,000 rows took 58.1 s against 63.4
    # and 63.9 s, with a lower peak; jobs.tag was 6% faster in fp32 and bf16 (runs
    # alternating, docs/BENCHMARKS.md). The shapes stay few (81, not 54, in fp32).
    cpu_batch_tokens: int = 2048
    # On GPU, a batch closes early rather than pad more than this share of its positions:
    # windows sorted within a few thousand sentences still differ a lot in the long tail
    # (batches of 64 CoNLL windows padded 10% of their positions, with this 2.4%).
    max_padding: float | None = 0.05
    # Pad each batch to a multiple of this many positions, on GPU only (tensor-core friendly
    # shapes). On CPU every padded position is computed for nothing: with length-sorted
    # batches, exact padding made the tagging actor 12% faster on CoNLL sentences.
    pad_to_multiple_of: int | None = 8
    # ... except for bf16 weights on CPU, where memory follows the input shapes: oneDNN keeps
    # kernels per shape, about 2.7 MiB each here (123 new batch lengths grew a process from 418
    # to 752 MiB), and with exact padding the actor's heap grew from 901 to 1,288 MiB between a
    # 5,000- and a 50,000-row run. Lengths round up within octaves (``padded_length``): exact
    # to 16 subwords, then 8 lengths per doubling, so a CoNLL corpus batches in 49 shapes
    # (exact: 81) with 2% more positions than exact padding; rounding to a multiple of 8, the
    # rule before, made 24 shapes but 15% more positions (a sentence is about 23 subwords).
    cpu_bf16_lengths_per_octave: int | None = 8
    context_length: int = 0  # document-context subwords per side (see ner_core.alignment); the training run's


def _weights_dtype(model) -> torch.dtype | None:
    """The dtype of a torch model's weights; None for other engines (ONNX Runtime)."""
    params = getattr(model, "parameters", None)
    first = next(params(), None) if callable(params) else None
    return first.dtype if first is not None else None


def length_batches(
    lengths: Sequence[int],
    max_windows: int,
    max_tokens: int | None = None,
    max_padding: float | None = None,
    pad_to_multiple_of: int | None = None,
    lengths_per_octave: int | None = None,
) -> list[list[int]]:
    """Window indices, shortest first, cut into forward-pass batches.

    A batch holds at most ``max_windows`` windows and ``max_tokens`` positions (its
    windows times its padded length: the last window's, rounded up by
    ``ner_core.alignment.padded_length``), and closes early where the next window would
    pad more than ``max_padding`` of its positions. Padding is measured on the exact
    lengths: the rounding is paid whatever the cut.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for i in order:
        length, n = lengths[i], len(batch) + 1
        width = padded_length(length, pad_to_multiple_of, lengths_per_octave)
        full = len(batch) >= max_windows or (max_tokens is not None and n * width > max_tokens)
        if batch and (full or (max_padding is not None and n * length - total - length > max_padding * n * length)):
            batches.append(batch)
            batch, total = [], 0
        batch.append(i)
        total += length
    if batch:
        batches.append(batch)
    return batches


class WordTagger:
    """Holds a model + tokenizer; turns lists of words into lists of IOB2 labels.

    Windows from all documents of a call are sorted by length before batching,
    so each forward pass pads little; results are put back in input order.
    Every word gets exactly one label (long documents go through overlapping
    windows) and the output sequence is repaired to valid IOB2.
    """

    def __init__(self, model, tokenizer, settings: InferenceSettings = InferenceSettings(), device: str | torch.device | None = None, autocast_dtype: torch.dtype | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings
        # ``model.device``: an HF model, or a ``ner_core.runtime`` engine (which has no parameters)
        self.device = torch.device(device) if device is not None else torch.device(model.device)
        self.model.to(self.device)
        self.autocast_dtype = autocast_dtype
        self.labels = LabelMap.from_id2label(model.config.id2label)
        # (max windows, max positions, max padding share) of a forward pass: ``length_batches``.
        # On CPU no padding share: kernels there are made and kept per input shape, and
        # batches cut by padding come in hundreds of shapes. They grew the fp32 actor from
        # 1,009 to 1,558 MiB RSS between 5,000 and 30,000 rows (fixed batches: 848 to 1,002),
        # and bf16 from a 910 to a 1,413 MiB peak at 20,000.
        if self.device.type == "cuda":
            self.batching = (settings.batch_size, settings.batch_tokens or settings.gpu_batch_tokens, settings.max_padding)
            self.padding = (settings.pad_to_multiple_of, None)  # (multiple, lengths per octave): ``padded_length``
        else:
            self.batching = (settings.batch_size, settings.batch_tokens or settings.cpu_batch_tokens, None)
            bf16 = _weights_dtype(self.model) == torch.bfloat16
            self.padding = (None, settings.cpu_bf16_lengths_per_octave if bf16 else None)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def predict_ids(
        self,
        docs: Sequence[Sequence[str]],
        on_batch: Callable[[int, int], None] | None = None,
        contexts: Sequence[tuple[Sequence[str], Sequence[str]] | None] | None = None,
    ) -> list[list[int]]:
        """Label ids per word for each document; ``contexts``: the words around each (see ``encode_batch``)."""
        s = self.settings
        per_doc = encode_batch(
            self.tokenizer, docs, max_length=s.max_length, stride=s.stride, contexts=contexts, context_length=s.context_length
        )
        return self.predict_windows(per_doc, [len(d) for d in docs], on_batch)

    def predict_windows(
        self, per_doc: Sequence[Sequence[Window]], num_words: Sequence[int], on_batch: Callable[[int, int], None] | None = None
    ) -> list[list[int]]:
        """Label ids per word from already-encoded windows (the bulk tagger encodes in other processes).

        ``on_batch(windows_done, windows_total)`` is called after each forward pass (progress).
        """
        flat: list[Window] = [win for wins in per_doc for win in wins]
        preds: list[list[int] | None] = [None] * len(flat)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        with torch.inference_mode(), self._autocast():
            done = 0
            for idx in length_batches([len(w.input_ids) for w in flat], *self.batching, *self.padding):
                done += len(idx)
                batch = pad_windows([flat[i] for i in idx], pad_id, *self.padding)
                input_ids = torch.tensor(batch["input_ids"], device=self.device)
                mask = torch.tensor(batch["attention_mask"], device=self.device)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits
                best = logits.argmax(-1).tolist()
                for row, i in zip(best, idx):
                    preds[i] = row
                if on_batch is not None:
                    on_batch(done, len(flat))
        out: list[list[int]] = []
        cursor = 0
        for wins, n in zip(per_doc, num_words):
            window_preds = preds[cursor : cursor + len(wins)]
            cursor += len(wins)
            out.append(merge_window_predictions(wins, window_preds, n))
        return out

    def predict(
        self,
        docs: Sequence[Sequence[str]],
        on_batch: Callable[[int, int], None] | None = None,
        contexts: Sequence[tuple[Sequence[str], Sequence[str]] | None] | None = None,
    ) -> list[list[str]]:
        """IOB2 labels per word for each document (always a valid IOB2 sequence)."""
        return [self.decode(ids) for ids in self.predict_ids(docs, on_batch, contexts)]

    def decode(self, label_ids: Sequence[int]) -> list[str]:
        """One document's label ids -> its IOB2 labels, repaired to a valid sequence.

        The one place predictions become tags: ``predict`` and the bulk tagger's
        actors (which predict from windows encoded elsewhere) both end here.
        """
        return repair(self.labels.decode(label_ids), "IOB2")
