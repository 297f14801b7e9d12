"""Streamed windows into length-grouped batches (``pipelines.training.batches``), without Ray."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipelines.training.batches import length_grouped_batches


def _stream(lengths, chunk=7):
    """Arrow batches of windows whose ids encode (window number, position): 1000 * i + j."""
    rows = [[1000 * i + j for j in range(n)] for i, n in enumerate(lengths)]
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        yield pa.table({"input_ids": pa.array(part, pa.list_(pa.int32())), "labels": pa.array([[-v for v in r] for r in part], pa.list_(pa.int32()))})


def _batches(lengths, windows, seed=0, **kw):
    args = dict(batch_size=4, pool=12, pad_id=0) | kw
    return list(length_grouped_batches(_stream(lengths), windows=windows, rng=np.random.default_rng(seed), **args))


def test_every_window_once_in_ceil_n_over_batch_size_batches_padded_into_arrays():
    lengths = list(np.random.default_rng(1).integers(1, 30, size=50))
    batches = _batches(lengths, windows=47)
    assert len(batches) == math.ceil(47 / 4) and sorted(len(b.input_ids) for b in batches)[0] == 3
    seen = []
    for b in batches:
        for ids, mask, labels in zip(b.input_ids, b.attention_mask, b.labels):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()
            i = int(ids[0]) // 1000
            assert list(ids[:n]) == [1000 * i + j for j in range(n)] == [-v for v in labels[:n]]
            assert (ids[n:] == 0).all() and (labels[n:] == -100).all()
            seen.append(i)
        assert b.tokens == int(b.attention_mask.sum())
    assert sorted(seen) == list(range(47))  # the first 47 windows of the stream, each once


def test_batches_group_lengths_within_a_pool_and_the_seed_changes_only_the_order():
    lengths = list(np.random.default_rng(2).integers(1, 30, size=48))
    one, again, other = _batches(lengths, 48, seed=5), _batches(lengths, 48, seed=5), _batches(lengths, 48, seed=6)
    assert [b.input_ids.tolist() for b in one] == [b.input_ids.tolist() for b in again]
    assert [b.input_ids.tolist() for b in one] != [b.input_ids.tolist() for b in other]
    for b in one:  # a batch holds neighbours in length order inside its pool of 12
        (p,) = {int(i) // 1000 // 12 for i in b.input_ids[:, 0]}
        rank = sorted(lengths[p * 12 : p * 12 + 12])
        assert sorted(b.attention_mask.sum(1).tolist()) in [rank[k : k + 4] for k in (0, 4, 8)]


def test_a_short_shard_is_an_error_not_a_hang():
    with pytest.raises(ValueError, match="the shard ended after 10 windows; this worker's share is 11"):
        _batches([3] * 10, windows=11)


def test_training_pads_its_batches_as_inference_does_on_the_same_device():
    import torch

    from ner_core.inference import batch_policy

    lengths = [3, 17, 23, 33]
    for device, dtype, widths in (("cpu", None, [3, 17, 23, 33]), ("cpu", torch.bfloat16, [3, 18, 24, 36]), ("cuda", torch.bfloat16, [3, 18, 24, 36])):
        policy = batch_policy(device, dtype)
        batches = _batches(lengths, windows=4, batch_size=1, pool=4, width=policy.width)
        assert sorted(b.input_ids.shape[1] for b in batches) == widths == [policy.width(n) for n in lengths]
