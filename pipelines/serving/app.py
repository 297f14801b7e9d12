"""The Serve application: one deployment that holds the predictor, behind a FastAPI ingress.

A request travels: ``POST /v1/tag`` -> ``requests.parse_body`` (a 4xx here for bad
input, before the model sees it) -> one ``tag_batch`` call per document, which
``@serve.batch`` gathers across concurrent requests into one model call of up to
``--max-batch-size`` documents (a request alone does not wait for others; with several
in flight a call waits up to ``--batch-wait-ms`` for more) -> the predictor, on the replica's model thread ->
each document's result (the request's ``min_score`` applied), in input order.

The model loads in ``__init__``: Serve sends a replica no traffic until its
constructor returns, so a replica that is still loading (at start or when the
autoscaler adds one) never holds requests. The price: ``/healthz`` cannot answer 503
"still loading", because Serve's proxy holds a request sent during the start until a
replica is up; it answers 503 when the model fails whole batches. ``build_app`` is the entry point of a
Serve config file (``serve deploy jobs/configs/serve.yaml``); ``ray-ner serve``
(``jobs.serve``) runs the same application from the command line.
"""

# No "from __future__ import annotations": FastAPI reads the routes' annotations (Request) at runtime.
import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from ner_core.documents import Document, document_from_text
from pipelines.serving.config import ServeConfig
from pipelines.serving.requests import Limits, RequestError, parse_body
from pipelines.serving.stats import ReplicaStats
from pipelines.tagging.model import ModelInfo, check_model, load_failure, local_model_dir

log = logging.getLogger(__name__)

api = FastAPI(title="ray-ner online tagging", docs_url=None, redoc_url=None)
WARM_UP = "Warm-up: Alice Smith flew to Paris."


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with a 413 as soon as it passes ``limit`` bytes (never held whole)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, None, f"the body has {int(declared):,} bytes, more than this server's limit of {limit:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise RequestError(413, None, f"the body has more than this server's limit of {limit:,} bytes")
    return bytes(body)


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # noqa: BLE001 - only a label
        return "?"


@serve.deployment
@serve.ingress(api)
class TaggerServer:
    """One replica: the predictor, loaded once, and the routes of the HTTP API."""

    def __init__(self, cfg: ServeConfig, identity: str, board=None):
        from pipelines.console.progress import Reporter

        self.cfg, self.identity = cfg, identity
        self.limits = Limits(cfg.max_chars, cfg.max_docs, cfg.max_body_bytes)
        self.stats = ReplicaStats()
        # One thread owns the model: torch gives every thread that runs its CPU kernels an
        # OpenMP team of its own (see pipelines.tagging.actor), and the event loop stays free
        # to parse requests and gather the next batch while a model call runs.
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="serve-model")
        self.predictor, self.device = self._model_thread.submit(self._load).result()
        self.healthy = True  # the warm-up answered; false while the model fails whole batches
        self.tag_batch.set_max_batch_size(cfg.max_batch_size)
        self._requests_in_flight = 0
        self.reporter = Reporter(board)  # per-second deltas for the ray-ner serve console, if one started us
        self._pusher: Optional[asyncio.Task] = None

    def _load(self):
        import torch

        from ner_core.predictor import Predictor

        cfg = self.cfg
        device = "cuda" if cfg.gpus_per_replica and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(cfg.threads)  # Ray sets a replica's OpenMP threads to its CPUs, at least 1
        try:
            predictor = Predictor.load(
                local_model_dir(cfg.model, self.identity), runtime=cfg.runtime, mixed_precision=cfg.mixed_precision,
                device=device, threads=cfg.threads, max_length=cfg.max_length, stride=cfg.stride,
            )  # fmt: skip
            warm = predictor.tag_documents([document_from_text({"text": WARM_UP}, "text")])[0]  # it answers
        except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
            raise load_failure(cfg.model, exc) from exc
        if warm.error is not None:
            raise load_failure(cfg.model, RuntimeError(f"the model loaded but cannot tag: {warm.error}"))
        return predictor, device

    # --- the model call -----------------------------------------------------------------

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)  # both reset from the config in __init__
    async def tag_batch(self, items: list[tuple[Document, Optional[float]]]) -> list[Any]:
        """``(document, min_score)`` items of any requests -> their TaggedDocuments, in order."""
        self.stats.batch(len(items))
        return await asyncio.get_running_loop().run_in_executor(self._model_thread, self._tag_isolated, items)

    def _tag_isolated(self, items: list[tuple[Document, Optional[float]]]) -> list[Any]:
        """One predictor call per min_score in the batch (requests may differ); the predictor itself
        tags a document that breaks the call alone, as its error."""
        out: list[Any] = [None] * len(items)
        for min_score in dict.fromkeys(m for _, m in items):
            index = [i for i, (_, m) in enumerate(items) if m == min_score]
            for i, tagged in zip(index, self.predictor.tag_documents([items[i][0] for i in index], min_score=min_score)):
                out[i] = tagged
        self.healthy = not all(r.error is not None for r in out)
        return out

    # --- routes -------------------------------------------------------------------------

    @api.post("/v1/tag")
    async def tag(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        self._start_pusher()
        try:
            req = parse_body(await read_body(request, self.limits.max_body_bytes), self.limits)
        except RequestError as exc:
            return self._answer(started, exc.status, exc.body())
        try:
            min_score = self.cfg.min_score if req.min_score is None else req.min_score
            results = await self._tag_documents([(doc, min_score) for doc in req.documents])
        except Exception as exc:  # noqa: BLE001 - a server fault, not the request's: no traceback to the client
            log.exception("tagging a request failed")
            return self._answer(started, 500, {"error": {"field": None, "reason": f"internal error: {type(exc).__name__}"}})
        docs = [r.to_dict() for r in results]
        return self._answer(started, 200, {"documents": docs}, len(docs), sum("error" in d for d in docs))

    async def _tag_documents(self, items: list[tuple[Document, Optional[float]]]) -> list[Any]:
        # A request alone starts its model call at once; with others in flight, the call waits
        # up to --batch-wait-ms for more documents, so batches grow with the load.
        self._requests_in_flight += 1
        self.tag_batch.set_batch_wait_timeout_s(self.cfg.batch_wait_ms / 1000 if self._requests_in_flight > 1 else 0.0)
        try:
            return await asyncio.gather(*(self.tag_batch(item) for item in items))
        finally:
            self._requests_in_flight -= 1

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        ok = self.predictor is not None and self.healthy
        return JSONResponse({"status": "ok" if ok else "failing"}, status_code=200 if ok else 503)

    @api.get("/v1/model")
    async def model(self) -> JSONResponse:
        cfg = self.cfg
        return JSONResponse({
            "model": cfg.model, "identity": self.identity, **self.predictor.describe(),  # labels, inference settings
            "runtime": cfg.runtime, "mixed_precision": cfg.mixed_precision, "device": self.device, "threads": cfg.threads,
            "batching": {"max_batch_size": cfg.max_batch_size, "batch_wait_ms": cfg.batch_wait_ms},
            "limits": {"max_chars": cfg.max_chars, "max_docs": cfg.max_docs, "max_body_bytes": cfg.max_body_bytes},
            "min_score": cfg.min_score,
        })  # fmt: skip

    @api.get("/v1/stats")
    async def replica_stats(self) -> JSONResponse:
        """This replica's counts since it started (with several replicas, each answers for itself)."""
        return JSONResponse({"replica": _replica_id(), **self.stats.snapshot()})

    def check_health(self) -> None:
        """Serve's own health check: a replica whose model fails every call is replaced."""
        if not self.healthy:
            raise RuntimeError("the model failed every document of its last call")

    # --- bookkeeping --------------------------------------------------------------------

    def _answer(self, started: float, status: int, body: dict, documents: int = 0, errors: int = 0) -> JSONResponse:
        self.stats.request(time.perf_counter() - started, status, documents, errors)
        return JSONResponse(body, status_code=status)

    def _start_pusher(self) -> None:
        if self._pusher is None and self.reporter.board is not None:
            self._pusher = asyncio.get_running_loop().create_task(self._push_every_second())

    async def _push_every_second(self) -> None:
        while self.reporter.board is not None:
            await asyncio.sleep(1.0)
            delta = self.stats.take_delta()
            if delta["latencies_ms"] or any(delta["counts"].values()):
                self.reporter.push({"kind": "serve", **delta})


def tagger_app(cfg: ServeConfig, model: Optional[ModelInfo] = None, board=None):
    """The bound application (``serve.run`` it); ``model``: ``check_model``'s answer if the caller has it."""
    if not cfg.model:
        raise ValueError("--model is required")
    model = model or check_model(cfg.model)  # fails here, in one line, not in every replica
    lo, hi = cfg.replica_range()
    scaling: dict[str, Any] = {"num_replicas": lo}
    if hi > lo:
        # A replica fills its batches when about max_batch_size one-document requests wait on it.
        scaling = {"autoscaling_config": {"min_replicas": lo, "initial_replicas": lo, "max_replicas": hi, "target_ongoing_requests": cfg.max_batch_size}}
    from pipelines.cluster import parse_resources

    actor = {"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica}
    if cfg.resources_per_replica:
        actor["resources"] = parse_resources(cfg.resources_per_replica)
    return TaggerServer.options(ray_actor_options=actor, max_ongoing_requests=cfg.max_ongoing_requests, **scaling).bind(cfg, model.identity, board)


def build_app(args: dict[str, Any]):
    """``import_path: pipelines.serving.app:build_app`` in a Serve config file; ``args`` are ``ServeConfig`` fields."""
    return tagger_app(ServeConfig(**{k.replace("-", "_"): v for k, v in (args or {}).items()}))
