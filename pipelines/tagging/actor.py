"""Stage 3 of tagging (an actor pool): the model, loaded once per actor, tags windows in batches.

On CPU the actor also turns its rows into windows first (``--preprocess auto``):
preprocessing tasks running beside it would take cores from the model's threads.
An actor call gets a few thousand rows (``--batch-size``); their windows are
sorted by length across the whole call, so each forward pass pads little.
The model call is ``Predictor.word_outputs`` (the one the training job's dev
scoring, ``jobs.evaluate`` and the server use too); labels, scores and entities come
from ``ner_core.decoding`` as arrays and go straight into Arrow columns.
A row whose windows break the model (it should not happen, but one bad row
must not cost the batch) is retried alone and becomes an error row.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipelines.tagging.config import TagPlan
from pipelines.tagging.reader import ERROR, RAW, raw_row
from pipelines.tagging.model import cached_tokenizer, load_failure, local_model_dir
from pipelines.tagging.preprocess import from_columns, input_columns, prepare

ENTITY_TYPE = pa.struct([("type", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()), ("score", pa.float32())])


class TagActor:
    """Holds one model; tags the windows of a batch of rows in length-sorted forward passes."""

    def __init__(self, plan: TagPlan, progress=None):
        began = time.time()
        # The model is loaded and run on one thread of the actor's own: Ray Data calls the actor
        # from another thread than the one that runs __init__, and two threads running torch's
        # CPU kernels get two OpenMP teams, which then sleep at their barriers instead of spinning.
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="tag-model")
        self._model_thread.submit(self._load, plan, progress).result()
        self.progress.push({"model_ready": {"began_at": began, "ready_at": time.time()}})  # for the job's start-up breakdown

    def _load(self, plan: TagPlan, progress) -> None:
        import torch

        from ner_core.precision import for_inference
        from ner_core.predictor import Predictor
        from ner_core.runtime import load_runtime
        from pipelines.console.progress import Reporter

        torch.set_num_threads(plan.torch_threads)
        path = local_model_dir(plan.model, plan.model_identity)
        device = "cuda" if plan.use_gpu and torch.cuda.is_available() else "cpu"
        try:  # the driver only read the model's files (model.check_model): a load failure is reported here
            engine = load_runtime(path, plan.runtime, threads=plan.torch_threads)  # torch, or ONNX Runtime (exported once per model version, cached)
            tokenizer = cached_tokenizer(plan.model, plan.model_identity)
        except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
            raise load_failure(plan.model, exc) from exc
        engine, dtype = for_inference(engine, plan.mixed_precision, device)
        self.predictor = Predictor(engine, tokenizer, plan.inference, device=device, autocast_dtype=dtype)
        self.progress = Reporter(progress)  # rows tagged, for the driver's progress line
        self.plan = plan

    def _count(self, rows: int):
        """Progress within a call, as the share of its rows whose windows are done, sent at most twice a second."""
        sent, last = [0], [time.monotonic()]

        def on_batch(done: int, total: int) -> None:
            if time.monotonic() - last[0] >= 0.5 or done == total:
                n = rows * done // max(total, 1) - sent[0]
                self.progress.add("rows", n)
                sent[0], last[0] = sent[0] + n, time.monotonic()

        return on_batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self._model_thread.submit(self._tag, batch).result()

    def _outputs(self, rows, good: list[int], batch: pa.Table):
        """The words' label probabilities (and a CRF's labels) of the good rows, and the rows still good after the model."""
        try:
            return *self.predictor.word_outputs(rows.windows, on_batch=self._count(len(good))), good
        except Exception:  # noqa: BLE001 - find the row that breaks the batch; the others still get tagged
            kept, parts = [], []
            for d, i in enumerate(good):
                try:
                    parts.append(self.predictor.word_outputs(rows.windows.subset([d])))
                    kept.append(i)
                except Exception as exc:  # noqa: BLE001
                    rows.errors[i], rows.raws[i] = f"tagging failed: {type(exc).__name__}: {exc}", rows.raws[i] or raw_row(batch, i)
                    rows.docs[i] = None
            probs = np.concatenate([p for p, _ in parts]) if parts else np.zeros((0, self.predictor.labels.num_labels), np.float32)
            viterbi = None if self.predictor.crf is None else np.concatenate([v for _, v in parts] or [np.zeros(0, np.int64)])
            return probs, viterbi, kept

    def _tag(self, batch: pa.Table) -> pa.Table:
        from ner_core.decoding import decode_probabilities

        rows = prepare(batch, self.plan) if self.plan.preprocess_in_actor else from_columns(batch)
        good = rows.good()
        subwords = np.zeros(batch.num_rows, np.int64)
        subwords[good] = np.bincount(rows.windows.doc, weights=rows.windows.lengths(), minlength=len(good))
        probs, viterbi, good = self._outputs(rows, good, batch)
        subwords[[i for i, d in enumerate(rows.docs) if d is None]] = 0
        self.progress.add("rows", batch.num_rows - len(good))  # rows that failed before (or in) the model
        words = np.array([len(rows.docs[i].words) for i in good], np.int64)
        decoded = decode_probabilities(probs, np.concatenate(([0], np.cumsum(words))), self.predictor.table, self.plan.min_score, viterbi)
        columns = tagged_columns(decoded, probs if self.plan.all_scores else None, rows.docs, good, batch.num_rows, self.predictor.table)
        out = input_columns(batch).append_column("tokens", rows.tokens())
        for name, values in columns.items():
            out = out.append_column(name, values)
        return (
            out.append_column(ERROR, pa.array(rows.errors, pa.string()))
            .append_column(RAW, pa.array(rows.raws, pa.string()))
            .append_column("__subwords", pa.array(subwords, pa.int64()))
        )


def tagged_columns(decoded, probs: np.ndarray | None, docs: list, good: list[int], num_rows: int, table) -> dict[str, pa.Array]:
    """``labels``, ``scores``, ``entities`` (and ``all_scores``) for every row of a batch, null for error rows.

    The per-word and per-entity arrays become Arrow list columns through their offsets; only
    an entity's text is cut out in Python (its characters, or its tokens joined).
    """
    valid = np.zeros(num_rows, bool)
    valid[good] = True
    mask = pa.array(~valid)
    per_row = np.zeros(num_rows, np.int64)
    per_row[good] = np.diff(decoded.word_offsets)
    word_offsets = pa.array(np.concatenate(([0], np.cumsum(per_row))).astype(np.int32))
    names = pa.array(list(table.labels.labels), pa.string())
    columns = {
        "labels": pa.ListArray.from_arrays(word_offsets, names.take(pa.array(decoded.label_ids)), mask=mask),
        "scores": pa.ListArray.from_arrays(word_offsets, pa.array(decoded.scores, pa.float32()), mask=mask),
    }
    ents = np.zeros(num_rows, np.int64)
    ents[good] = np.diff(decoded.entity_offsets())
    starts, ends, texts = [], [], []
    for d, t, a, b in zip(decoded.entity_doc.tolist(), decoded.entity_type.tolist(), decoded.entity_start.tolist(), decoded.entity_end.tolist()):
        doc = docs[good[d]]
        if doc.text is not None and doc.offsets is not None:
            a, b = doc.offsets[a].start, doc.offsets[b - 1].end
            texts.append(doc.text[a:b])
        else:
            texts.append(" ".join(doc.words[a:b]))
        starts.append(a)
        ends.append(b)
    struct = pa.StructArray.from_arrays(
        [
            pa.array(list(table.types), pa.string()).take(pa.array(decoded.entity_type)),
            pa.array(starts, pa.int64()),
            pa.array(ends, pa.int64()),
            pa.array(texts, pa.string()),
            pa.array(decoded.entity_score, pa.float32()),
        ],
        fields=list(ENTITY_TYPE),
    )
    columns["entities"] = pa.ListArray.from_arrays(pa.array(np.concatenate(([0], np.cumsum(ents))).astype(np.int32)), struct, mask=mask)
    if probs is not None:
        width = table.labels.num_labels
        per_word = pa.ListArray.from_arrays(pa.array(np.arange(0, probs.size + 1, width, dtype=np.int32)), pa.array(probs.reshape(-1), pa.float32()))
        columns["all_scores"] = pa.ListArray.from_arrays(word_offsets, per_word, mask=mask)
    return columns
