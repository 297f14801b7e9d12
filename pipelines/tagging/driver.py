"""Bulk tagging on Ray Data: files in, per-token IOB labels and entity spans out.

A row travels through these modules, in this order, all streaming (memory does
not grow with the corpus):

1. ``reader.TaggingInput`` (read tasks, small files packed together): Parquet/JSONL
   files in blocks; each row keeps its source file and row number, unparseable rows
   become error rows; each file's row count is reported to the store.
2. ``preprocess.preprocess`` (tasks on GPU, in the actor on CPU; ``--preprocess``): row -> words (+ character offsets for raw
   text) -> subword windows.
3. ``actor.TagActor`` (an actor pool, the model loaded once per actor): batched,
   length-sorted inference; one label per word, entity spans.
4. ``sink.TaggedOutputSink``: pieces per source file into staging; this driver
   commits files once all their rows are there, many in one pass (``store``), which
   is what makes a killed job resumable with nothing lost and nothing written twice.

Settings: ``config.TagConfig`` (the command line) becomes one ``TagPlan`` here,
after the model (``model``) and the input have been checked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict

from pipelines.cluster import parse_resources, require_reachable
from pipelines.storage import input_files
from pipelines.tagging.config import EXTENSIONS, OUTPUT_SETTINGS, TagConfig, TagPlan, TagRunError, arithmetic, infer_format
from pipelines.tagging.reader import TaggingInput, scan_jsonl_columns
from pipelines.tagging.model import check_model
from pipelines.tagging.sink import TaggedOutputSink
from pipelines.tagging.store import OutputStore, source_key

__all__ = ["TagConfig", "TagRunError", "run_tagging"]

log = logging.getLogger(__name__)


def run_tagging(cfg: TagConfig, progress: bool = True) -> dict:
    """Tag every input file not yet committed in ``cfg.output``; returns the manifest."""
    from pipelines.console.jobs import estimate_rows, tagging_plan

    if not cfg.model or not cfg.input or not cfg.output:
        raise TagRunError("--model, --input and --output are required")
    # Read and write tasks put staged pieces and read reports under --output from any node
    # and the driver commits from its own listing, so every node must see the same folder.
    require_reachable(
        cfg.output,
        shared=cfg.output_shared,
        needs={"CPU": cfg.cpus_per_task, "GPU": cfg.gpus_per_actor, **parse_resources(cfg.task_resources), **parse_resources(cfg.actor_resources)},
        describe=f"--output {cfg.output}",
        what="tagging tasks",
        fix="use an s3:// --output, or --output-shared true if it is a mount every node shares",
    )
    started = time.time()
    model = check_model(cfg.model)
    files = input_files(cfg.input, tuple(EXTENSIONS))
    paths = list(files)
    try:
        plan = TagPlan.resolve(cfg, model, cfg.format or infer_format(paths))
    except ValueError as exc:
        raise TagRunError(str(exc)) from None
    for note in plan.notes:
        log.warning("%s", note)
    store = OutputStore(cfg.output)
    if cfg.overwrite:
        for name in store.listdir(store.path()):
            store.remove(store.path(name))
    settings = _output_settings(cfg, plan, store, files)

    keys = {source_key(p): p for p in paths}
    done = store.resume()  # commits what a previous run finished, forgets its other work
    pending = [(p, k, files[p]) for k, p in keys.items() if k not in done]
    if pending:  # files are added to this output: its manifest (of an earlier run) no longer describes it
        store.remove(store.path("_manifest.json"))
    log.info("%d input files, %d already done, %d to tag", len(paths), len(paths) - len(pending), len(pending))
    total_rows = estimate_rows([p for p, _, _ in pending], plan.format)
    if progress:
        tagging_plan(cfg, plan, len(paths), len(paths) - len(pending), total_rows)

    sink = TaggedOutputSink(store.root, cfg.output_format, keys, cfg.id_column, cfg.rows_per_file, input_format=plan.format, jsonl_types=settings.get("jsonl_types"))
    timings = _run_pipeline(cfg, plan, store, pending, sink, total_rows, progress) if pending else {}
    record_jsonl_types(store, settings)
    return _finish(cfg, model, settings, store, keys, sink, len(pending), time.time() - started, startup_breakdown(started, timings))


def startup_breakdown(started: float, timings: dict) -> dict:
    """The job's start-up, from its start (Ray already up) to the first rows tagged, in parts:
    ``plan_s`` (model check, input listing, resume, plan), ``actor_s`` (Ray Data's planning,
    the actor's scheduling, its process and class import), ``model_load_s`` (torch and the
    model, in the first actor ready), ``first_rows_s`` (the first block read and tagged).
    Timestamps from the actor's clock: on a cluster, its node's."""
    if not timings.get("first_rows_at"):
        return {"startup_s": None}
    parts = {"startup_s": round(timings["first_rows_at"] - started, 2)}
    ready = timings.get("model_ready")
    if ready:
        marks = [started, timings["pipeline_at"], ready["began_at"], ready["ready_at"], timings["first_rows_at"]]
        names = ("plan_s", "actor_s", "model_load_s", "first_rows_s")
        parts["startup_parts"] = {n: round(max(b - a, 0.0), 2) for n, a, b in zip(names, marks, marks[1:])}
    return parts


def _output_settings(cfg: TagConfig, plan: TagPlan, store: OutputStore, files: dict[str, int]) -> dict:
    """The settings recorded in ``_job.json``; a resumed run must match them (``OUTPUT_SETTINGS``)."""
    # What is recorded (and compared on resume) is what the run uses.
    settings = {k: v for k, v in asdict(cfg).items() if k != "overwrite"}
    settings.update(
        format=plan.format, max_length=plan.max_length, stride=plan.stride, temperature=plan.inference.temperature,
        model_identity=plan.model_identity, precision=arithmetic(cfg),
    )  # fmt: skip
    previous = store.read_json(store.path("_job.json"))
    changed = [k for k in OUTPUT_SETTINGS if previous is not None and previous.get(k) != settings.get(k)]
    if changed:
        k = changed[0]
        what = (
            f"another version of model {settings['model']} (files {previous.get(k)}, now {settings.get(k)})"
            if k == "model_identity"
            else f"{k}={previous.get(k)!r} (now {settings.get(k)!r})"
        )
        raise TagRunError(f"{cfg.output} holds output made with {what}; use a new --output, or --overwrite to replace it")
    if plan.format == "jsonl" and cfg.output_format == "parquet":
        # One Parquet type per field for the whole output, fixed when it was started; a new
        # output's types come from a scan that runs beside the tagging (record_jsonl_types).
        jsonl_types = (previous or {}).get("jsonl_types")
        if jsonl_types is None:
            settings["jsonl_types"] = scan_jsonl_columns(files, cfg.rows_per_block, plan.column, plan.pretokenized, _task_args(cfg))
        else:
            settings["jsonl_types"] = jsonl_types
            _note_json_text(settings, jsonl_types)
    if previous is None:
        store.write_json(store.path("_job.json"), _recorded(settings))
    return settings


def _recorded(settings: dict) -> dict:
    """``settings`` as ``_job.json`` holds them: without the types of a scan still running."""
    return {k: v for k, v in settings.items() if k != "jsonl_types" or isinstance(v, dict)}


def record_jsonl_types(store: OutputStore, settings: dict) -> None:
    """Waits for the scan started by ``_output_settings`` (if any) and adds its types to ``_job.json``.

    A run killed before this point leaves ``_job.json`` without them; the run that resumes
    it scans again, and the same input gives the same types.
    """
    scan = settings.get("jsonl_types")
    if scan is None or isinstance(scan, dict):
        return
    import ray

    settings["jsonl_types"] = ray.get(scan)
    _note_json_text(settings, settings["jsonl_types"])
    job = store.read_json(store.path("_job.json")) or _recorded(settings)
    job.update(jsonl_types=settings["jsonl_types"], json_encoded_columns=settings["json_encoded_columns"])
    store.write_json(store.path("_job.json"), job)


def _note_json_text(settings: dict, jsonl_types: dict) -> None:
    settings["json_encoded_columns"] = [name for name, t in jsonl_types.items() if t is None]
    if settings["json_encoded_columns"]:
        log.warning("fields with more than one type, stored in Parquet as JSON text: %s", settings["json_encoded_columns"])


def _task_args(cfg: TagConfig) -> dict:
    """Ray resources of the read, preprocessing and write tasks."""
    resources = parse_resources(cfg.task_resources)
    return {"num_cpus": cfg.cpus_per_task, **({"resources": resources} if resources else {})}


def _run_pipeline(cfg: TagConfig, plan: TagPlan, store: OutputStore, pending: list[tuple[str, str, int]], sink: TaggedOutputSink, total_rows: int | None, progress: bool) -> dict:
    """read -> preprocess -> actors -> sink, with finished files committed as the job goes.

    Returns when it started, when the first actor had its model (``model_ready``) and when the
    first rows were reported tagged (``time.time()``; None if never).
    """
    pipeline_at = time.time()
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    from pipelines.console.terminal import verbose
    from pipelines.console.jobs import TaggingMonitor
    from pipelines.ray_env import worker_env_vars
    from pipelines.tagging.actor import TagActor
    from pipelines.tagging.preprocess import preprocess

    DataContext.get_current().enable_progress_bars = progress and verbose()  # Ray Data's own bars; ours is TaggingMonitor's line
    monitor = TaggingMonitor(total_rows, show=progress)
    task_args = _task_args(cfg)
    actor_resources = parse_resources(cfg.actor_resources)
    reader = TaggingInput(
        pending, plan.format, store.read_reports(), cfg.rows_per_block, plan.column, plan.pretokenized,
        read_attempts=cfg.read_attempts, retry_delay_s=cfg.read_retry_delay_s, read_tasks=cfg.read_tasks,
    )  # fmt: skip
    # Exactly the reader's read tasks (small files packed together, a large one alone): Ray
    # Data's own default splits each file's blocks into many small ones and then cannot fuse
    # preprocessing into the read, which costs a noticeable share of a small machine's run.
    ds = ray.data.read_datasource(reader, override_num_blocks=len(reader.groups), **task_args)
    if not plan.preprocess_in_actor:
        ds = ds.map_batches(preprocess, batch_format="pyarrow", batch_size=None, fn_kwargs={"plan": plan}, **task_args)
    ds = ds.map_batches(
        TagActor,
        batch_format="pyarrow",
        batch_size=cfg.batch_size,
        fn_constructor_kwargs={"plan": plan, "progress": monitor.board},
        compute=ActorPoolStrategy(min_size=plan.min_actors, max_size=plan.max_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor,
        # Ray sets OMP_NUM_THREADS to the actor's CPUs before torch starts, and raising
        # torch's threads above it later made OpenMP crawl: the actor starts with OpenMP
        # sized to its threads instead.
        runtime_env={"env_vars": {**worker_env_vars(), "OMP_NUM_THREADS": str(plan.torch_threads), **_onednn_env(cfg)}},
        **({"resources": actor_resources} if actor_resources else {}),
    )
    stop = threading.Event()
    committer = threading.Thread(target=_commit_loop, args=(store, stop, cfg.commit_every_s), daemon=True)
    committer.start()
    try:
        with monitor:
            ds.write_datasink(sink, ray_remote_args=task_args)
    finally:
        stop.set()
        committer.join()
    store.commit_ready()
    return {"pipeline_at": pipeline_at, "model_ready": monitor.model_ready, "first_rows_at": monitor.first_rows_at}


def _onednn_env(cfg: TagConfig) -> dict[str, str]:
    """The size of the actors' oneDNN kernel cache on CPU: 16 kernels in fp32, 256 in bf16.

    oneDNN (torch's CPU kernels) keeps many kernels with their memory, made per input shape.
    fp32 batches are padded exactly, so nearly every batch brings a new shape, and a small
    cache bounds the memory at the same speed. bf16 kernels cost more to make and to keep;
    its batches come in a few dozen lengths (``ner_core.alignment.padded_length``), whose
    kernels 256 holds, while the bound still caps what one-off shapes add over a long run
    (docs/performance.md). A value set in the environment wins.
    """
    if "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ:
        return {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"]}
    capacity = None if cfg.gpus_per_actor else {"fp32": "16", "bf16": "256"}.get(arithmetic(cfg))
    return {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": capacity} if capacity else {}


def _commit_loop(store: OutputStore, stop: threading.Event, every_s: float) -> None:
    """Commit finished source files while the job runs, so a kill loses only files in flight."""
    while not stop.wait(every_s):
        try:
            store.commit_ready()
        except Exception as exc:  # noqa: BLE001 - a failed listing is retried next round and at the end
            log.warning("commit pass failed (will retry): %s", exc)


def _finish(
    cfg: TagConfig, model, settings: dict, store: OutputStore, keys: dict[str, str], sink: TaggedOutputSink, files_tagged: int, elapsed: float, startup: dict
) -> dict:
    """Checks every input file is committed or reported failed; writes and returns ``_manifest.json``."""
    totals = store.totals()
    # Files whose read failed: reported, their rows dropped, read whole by the next run.
    files_failed = [f for f in store.failures() if source_key(f["source"]) in keys]
    failed_keys = {source_key(f["source"]) for f in files_failed}
    for f in files_failed:
        log.error("input file failed, not tagged: %s: %s", f["source"], f["reason"])
    uncommitted = sorted(set(keys) - store.done_keys() - failed_keys)
    if uncommitted:
        raise TagRunError(f"{len(uncommitted)} input files did not complete (first: {keys[uncommitted[0]]}); run the job again to finish them")
    store.clear_staging()  # reports, failed files' pieces, a write retried after its file was committed
    run_stats = dict(sink.totals)
    words = run_stats.get("words", 0)
    manifest = {
        **{k: totals[k] for k in ("rows_read", "rows_written", "rows_failed")},
        "files": totals["files"],
        "files_failed": files_failed,
        "json_encoded_columns": settings.get("json_encoded_columns", []),
        "model": cfg.model,
        "model_labels": model.labels,
        "settings": settings,
        "this_run": {
            **run_stats,
            "files_tagged": files_tagged,
            "seconds": round(elapsed, 2),
            **startup,  # startup_s and its parts (``startup_breakdown``)
            "words_per_s": round(words / elapsed, 1) if elapsed else None,
        },
    }
    store.write_json(store.path("_manifest.json"), manifest)
    return manifest
