"""Which autocast dtype a ``--mixed-precision`` setting means on a given device.

One place for the rule, shared by training, evaluation and bulk tagging, so a
model is never scored in one precision and served in another by accident.

- ``auto``: bf16 on a GPU that supports it (fp16 on older GPUs), full fp32 on CPU.
  CPU stays fp32 by default because bf16 is only fast on CPUs with native bf16
  (AVX512-BF16 / AMX) and costs a little accuracy; ask for it explicitly.
- ``bf16``: bf16 autocast on GPU or CPU; on a CPU with native bf16 it is much faster
  (docs/performance.md).
- ``fp16``: GPU only (CPU autocast has no fast fp16 path).
- ``none``: fp32 everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only where a dtype is asked for: settings are checked in light processes too
    import torch

MIXED_PRECISION_CHOICES = ("auto", "bf16", "fp16", "none")


def check_mixed_precision(setting: str) -> None:
    if setting not in MIXED_PRECISION_CHOICES:
        raise ValueError(f"--mixed-precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {setting!r}")


def autocast_dtype(setting: str, device_type: str) -> torch.dtype | None:
    """The dtype for ``torch.autocast`` (None: no autocast, run in fp32)."""
    import torch

    check_mixed_precision(setting)
    if setting == "none":
        return None
    if device_type == "cuda":
        if setting == "fp16":
            return torch.float16
        if setting == "bf16" or torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        raise ValueError("--mixed-precision fp16 needs a GPU; on CPU use bf16 (fast on CPUs with AVX512-BF16 or AMX) or none")
    return None


def for_inference(model, setting: str, device_type: str):
    """``(model, autocast dtype)`` for a model loaded only to predict (jobs.tag, jobs.evaluate).

    bf16 on CPU casts the weights once instead of autocasting every forward pass: the same
    F1, faster and with a lower peak, because autocast re-casts every weight in every pass
    and the actor's heap grows with those short-lived copies. GPUs keep autocast (its fp32 master weights and reductions are
    what their kernels are tuned for). Never for a model being trained: its weights must
    stay fp32.
    """
    import torch

    dtype = autocast_dtype(setting, device_type)
    if device_type == "cpu" and dtype == torch.bfloat16 and isinstance(model, torch.nn.Module):
        return model.to(torch.bfloat16), None
    return model, dtype
