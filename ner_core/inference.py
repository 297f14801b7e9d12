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
    batch_size: int = 64  # windows per forward pass, at most (see ``length_batches``)
    # Also positions per forward pass (windows x padded length), at most, so short windows go
    # in larger batches and long ones in smaller. None: the device's default, below.
    batch_tokens: int | None = None
    gpu_batch_tokens: int = 8192
    # On CPU this keeps sentence-length windows in full batches and splits the end of each
    # call's length sort, its longest windows, into smaller batches: one batch padded to the
    # longest window otherwise held most of the padding (docs/performance.md).
    cpu_batch_tokens: int = 2048
    # On GPU, a batch closes early rather than pad more than this share of its positions:
    # windows sorted within a few thousand sentences still differ a lot in the long tail
    # (batches of 64 CoNLL windows padded 10% of their positions, with this 2.4%).
    max_padding: float | None = 0.05
    # Pad each batch to a multiple of this many positions, on GPU only (tensor-core friendly
    # shapes). On CPU every padded position is computed for nothing, so batches pad exactly.
    pad_to_multiple_of: int | None = 8
    # ... except for bf16 weights on CPU, where memory follows the input shapes: oneDNN keeps
    # kernels per shape, so exact padding grows an actor's memory with every new length.
    # Lengths round up within octaves (``padded_length``): few shapes, little extra padding.
    cpu_bf16_lengths_per_octave: int | None = 8
    context_length: int = 0  # document-context subwords per side (see ner_core.alignment); the training run's
    temperature: float = 1.0  # logits are divided by it before the softmax (fitted on dev by jobs.train)

    def batching(self, device_type: str, weights_dtype=None) -> tuple:
        """(max windows, max positions, max padding share, pad multiple, lengths per octave) of a forward
        pass on this device (see ``length_batches``). On CPU no padding share: kernels there are made and
        kept per input shape, and batches cut by padding come in hundreds of shapes."""
        if device_type == "cuda":
            return (self.batch_size, self.batch_tokens or self.gpu_batch_tokens, self.max_padding, self.pad_to_multiple_of, None)
        bf16 = str(weights_dtype) == "torch.bfloat16"
        return (self.batch_size, self.batch_tokens or self.cpu_batch_tokens, None, None, self.cpu_bf16_lengths_per_octave if bf16 else None)


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
