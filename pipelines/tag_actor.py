"""Stage 3 of tagging (an actor pool): the model, loaded once per actor, tags windows in batches.

On CPU the actor also turns its rows into windows first (``--preprocess auto``):
preprocessing tasks running beside it would take cores from the model's threads.
An actor call gets a few thousand rows (``--batch-size``); their windows are
sorted by length across the whole call, so each forward pass pads little.
Predictions become labels in ``WordTagger.decode`` (label map + IOB2 repair), the
one place the training job's dev scoring and ``jobs.evaluate`` also use.
A row whose windows break the model (it should not happen, but one bad row
must not cost the batch) is retried alone and becomes an error row.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from ner_core.spans import extract_spans
from pipelines.tag_config import TagPlan
from pipelines.tag_input import ERROR, RAW, raw_row
from pipelines.tag_model import cached_tokenizer, load_failure, local_model_dir
from pipelines.tag_preprocess import from_columns, input_columns, prepare

ENTITY_TYPE = pa.struct([("type", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())])


class TagActor:
    """Holds one model; tags the windows of a batch of rows in length-sorted forward passes."""

    def __init__(self, plan: TagPlan, progress=None):
        # The model is loaded and run on one thread of the actor's own. Ray Data calls the
        # actor from another thread than the one that runs __init__, and every thread that runs
        # torch's CPU kernels gets an OpenMP team of its own: two teams of 2 threads on 2 cores
        # made OpenMP (libgomp) stop spinning at its barriers and sleep instead: about 1,400
        # times a second per thread in jobs.tag, against 9 times in 15 s with one thread, and
        # the actor used 1.5 of the 2 cores instead of 1.7 (docs/BENCHMARKS.md).
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="tag-model")
        self._model_thread.submit(self._load, plan, progress).result()

    def _load(self, plan: TagPlan, progress) -> None:
        import torch

        from ner_core.inference import InferenceSettings, WordTagger
        from ner_core.precision import for_inference
        from ner_core.runtime import load_runtime
        from pipelines.progress import Reporter

        torch.set_num_threads(plan.torch_threads)
        path = local_model_dir(plan.model, plan.model_identity)
        device = "cuda" if plan.use_gpu and torch.cuda.is_available() else "cpu"
        # windows arrive cut (tag_preprocess): only the batching settings apply here
        settings = InferenceSettings(batch_size=plan.window_batch_size, batch_tokens=plan.batch_tokens)
        try:  # the driver only read the model's files (tag_model.check_model): a load failure is reported here
            engine = load_runtime(path, plan.runtime, threads=plan.torch_threads)  # torch, or ONNX Runtime (exported once per model version, cached)
            tokenizer = cached_tokenizer(plan.model, plan.model_identity)
        except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
            raise load_failure(plan.model, exc) from exc
        engine, dtype = for_inference(engine, plan.mixed_precision, device)
        self.tagger = WordTagger(engine, tokenizer, settings, device=device, autocast_dtype=dtype)
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

    def _tag(self, batch: pa.Table) -> pa.Table:
        rows = prepare(batch, self.plan) if self.plan.preprocess_in_actor else from_columns(batch)
        errors, raws, docs = rows.errors, rows.raws, rows.docs
        good = rows.good()
        ids: dict[int, list[int]] = {}
        try:
            ids.update(zip(good, self.tagger.predict_windows([rows.windows[i] for i in good], [len(docs[i].words) for i in good], on_batch=self._count(len(good)))))
        except Exception:  # noqa: BLE001 - find the row that breaks the batch; the others still get tagged
            for i in good:
                try:
                    ids[i] = self.tagger.predict_windows([rows.windows[i]], [len(docs[i].words)])[0]
                except Exception as exc:  # noqa: BLE001
                    errors[i], raws[i] = f"tagging failed: {type(exc).__name__}: {exc}", raws[i] or raw_row(batch, i)
        self.progress.add("rows", batch.num_rows - len(good))  # rows that failed before the model
        labels: list[list[str] | None] = [None] * batch.num_rows
        entities: list[list[dict] | None] = [None] * batch.num_rows
        subwords = [0] * batch.num_rows
        for i, label_ids in ids.items():
            if errors[i] is not None:
                continue
            labels[i] = self.tagger.decode(label_ids)
            entities[i] = docs[i].entities(extract_spans(labels[i]))
            subwords[i] = sum(len(w.input_ids) for w in rows.windows[i])
        return (
            input_columns(batch)
            .append_column("tokens", rows.tokens())
            .append_column("labels", pa.array(labels, pa.list_(pa.string())))
            .append_column("entities", pa.array(entities, pa.list_(ENTITY_TYPE)))
            .append_column(ERROR, pa.array(errors, pa.string()))
            .append_column(RAW, pa.array(raws, pa.string()))
            .append_column("__subwords", pa.array(subwords, pa.int64()))
        )
