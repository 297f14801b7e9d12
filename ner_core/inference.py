"""Inference settings and how forward passes are batched (used by ``ner_core.predictor``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    lengths_per_octave: int | None = None  # None: exact padding

    def width(self, length: int) -> int:
        return padded_length(length, lengths_per_octave=self.lengths_per_octave)

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        return length_batches(lengths, self.max_windows, self.max_tokens, self.width)


def batch_policy(device_type: str, compute_dtype=None, *, max_windows: int = 64, max_tokens: int | None = None) -> BatchPolicy:
    """The one batching rule: by the dtype the kernels run in (bf16/fp16 weights or autocast),
    with the device's default for the positions per pass.

    fp32 pads exactly: every padded position is computed for nothing. bf16 and fp16 round
    lengths within octaves (8 per doubling), so batches come in a few dozen shapes: oneDNN
    makes and keeps bf16 kernels per input shape (docs/performance.md, "Batch padding on CPU"),
    and above 64 subwords the lengths are multiples of 8 as tensor cores like them. Positions
    per pass: 8,192 on GPU, 2,048 on CPU (sentence-length windows in full batches of 64).
    """
    reduced = str(compute_dtype) in ("torch.bfloat16", "torch.float16")
    return BatchPolicy(max_windows, max_tokens or (8192 if device_type == "cuda" else 2048), lengths_per_octave=8 if reduced else None)


def length_batches(lengths: Sequence[int], max_windows: int, max_tokens: int | None = None, width: Callable[[int], int] = int) -> list[list[int]]:
    """Window indices, shortest first, cut into forward-pass batches.

    A batch holds at most ``max_windows`` windows and ``max_tokens`` positions: its windows
    times its padded length, ``width`` of its last (longest) window's length.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        full = len(batch) >= max_windows or (max_tokens is not None and (len(batch) + 1) * width(lengths[i]) > max_tokens)
        if batch and full:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches
