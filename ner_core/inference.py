"""Inference settings and how forward passes are batched (used by ``ner_core.predictor``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ner_core.alignment import padded_length


@dataclass(frozen=True)
class InferenceSettings:
    """How windows are cut and batched at prediction time."""

    max_length: int = 256
    stride: int = 64
    batch_size: int = 64  # windows per forward pass, at most (see ``batch_policy``)
    # Also positions per forward pass (windows x padded length), at most, so short windows go
    # in larger batches and long ones in smaller. None: the device's default (``batch_policy``).
    batch_tokens: int | None = None
    context_length: int = 0  # document-context subwords per side (see ner_core.alignment); the training run's
    temperature: float = 1.0  # logits are divided by it before the softmax (fitted on dev by jobs.train)

    def batching(self, device_type: str, compute_dtype=None) -> "BatchPolicy":
        """The forward-pass batching of these settings on this device (``batch_policy``)."""
        return batch_policy(device_type, compute_dtype, max_windows=self.batch_size, max_tokens=self.batch_tokens)


@dataclass(frozen=True)
class BatchPolicy:
    """How windows become forward passes, for inference and training alike: sorted by length,
    cut at ``max_windows`` windows or ``max_tokens`` positions (``length_batches``), each batch
    padded to ``width`` of its longest window (``ner_core.alignment.padded_length``)."""

    max_windows: int
    max_tokens: int | None = None
    max_padding: float | None = None  # close a batch before it pads more than this share
    pad_to_multiple_of: int | None = None
    lengths_per_octave: int | None = None

    def width(self, length: int) -> int:
        return padded_length(length, self.pad_to_multiple_of, self.lengths_per_octave)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        return length_batches(lengths, self.max_windows, self.max_tokens, self.max_padding, self.pad_to_multiple_of, self.lengths_per_octave)


def batch_policy(device_type: str, compute_dtype=None, *, max_windows: int = 64, max_tokens: int | None = None) -> BatchPolicy:
    """The one batching rule, by device and the dtype its kernels run in (bf16 weights or autocast).

    GPU: 8,192 positions, lengths padded to a multiple of 8 (tensor-core shapes), a batch closed
    before it pads 5% of its positions. CPU: 2,048 positions (sentence-length windows in full
    batches, the longest of a call in smaller ones); fp32 pads exactly (every padded position is
    computed for nothing), bf16 rounds lengths within octaves because oneDNN makes and keeps
    bf16 kernels per input shape (docs/performance.md, "Batch padding on CPU").
    """
    if device_type == "cuda":
        return BatchPolicy(max_windows, max_tokens or 8192, max_padding=0.05, pad_to_multiple_of=8)
    bf16 = str(compute_dtype) == "torch.bfloat16"
    return BatchPolicy(max_windows, max_tokens or 2048, lengths_per_octave=8 if bf16 else None)


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
