"""Settings of the online tagger (``ServeConfig``): the ``ray-ner serve`` flags and ``serve deploy`` args.

One dataclass for both: ``jobs.serve`` builds its flags from the fields (``jobs.cli``) and
``pipelines.serving.app.build_app`` takes the same names from a Serve config file's ``args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ner_core.precision import check_mixed_precision
from ner_core.runtime import RUNTIMES, check_runtime
from pipelines.cluster import parse_range, parse_resources
from pipelines.options import ADVANCED, IO, MODEL, RESOURCES, option


@dataclass
class ServeConfig:
    """Every setting of ``ray-ner serve`` and its default."""

    model: str | None = field(default=None, metadata=option("trained model directory (local or s3://, copied once per node)", group=MODEL, essential=True))
    host: str = field(default="127.0.0.1", metadata=option("address the HTTP server binds (0.0.0.0 exposes it to the network)", group=IO, essential=True))
    port: int = field(default=8000, metadata=option("HTTP port", group=IO, essential=True))
    app_name: str = field(default="ray-ner", metadata=option("Serve application name", group=ADVANCED))
    replicas: str = field(default="1", metadata=option("model copies serving requests: N, or MIN-MAX to autoscale on requests in flight", group=RESOURCES, essential=True))
    cpus_per_replica: float = field(default=1.0, metadata=option("CPUs per model copy", group=RESOURCES, essential=True))
    gpus_per_replica: float = field(default=0.0, metadata=option("GPUs per model copy; fractional to share a GPU", group=RESOURCES, essential=True))
    resources_per_replica: str | dict[str, float] | None = field(default=None, metadata=option("custom Ray resources per replica, NAME=AMOUNT[,...] (e.g. gpu_node=1)", group=RESOURCES))
    torch_threads: int | None = field(default=None, metadata=option("model threads per replica (default: its CPUs, at least 1)", group=RESOURCES))
    # Documents, not requests: a request of 32 texts is 32 items of the batch.
    max_batch_size: int = field(default=32, metadata=option("documents per model call, at most", group=ADVANCED))
    batch_wait_ms: float = field(default=50.0, metadata=option("with other requests in flight, how long a model call waits for more documents (a request alone never waits)", group=ADVANCED))
    # Serve's default (5) would cap a replica's batch at 5 one-document requests.
    max_ongoing_requests: int = field(default=64, metadata=option("requests a model copy takes at once; more wait in the proxy", group=ADVANCED))
    mixed_precision: str = field(default="auto", metadata=option("auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | none", group=MODEL, essential=True, metavar="MODE"))
    runtime: str = field(default="torch", metadata=option(f"model engine: {' | '.join(RUNTIMES)}", group=MODEL, essential=True))
    max_length: int | None = field(default=None, metadata=option("subword window length (default: the model's own setting)", group=MODEL))
    stride: int | None = field(default=None, metadata=option("subword overlap between windows of long documents (default: the model's)", group=MODEL))
    min_score: float | None = field(default=None, metadata=option("drop entities scored under this (0-1); a request's min_score overrides it", group=MODEL, essential=True))
    max_chars: int = field(default=100_000, metadata=option("characters per document, at most (longer: 413)", group=IO))
    max_docs: int = field(default=256, metadata=option("documents per request, at most (more: 413)", group=IO))

    def __post_init__(self):
        check_mixed_precision(self.mixed_precision)
        check_runtime(self.runtime, self.mixed_precision)
        if self.runtime != "torch" and self.gpus_per_replica:
            raise ValueError(f"--runtime {self.runtime} runs on CPU; with --gpus-per-replica use --runtime torch")
        if self.mixed_precision == "fp16" and not self.gpus_per_replica:
            raise ValueError("--mixed-precision fp16 needs --gpus-per-replica > 0; on CPU use bf16 or none")
        for name in ("max_batch_size", "max_ongoing_requests", "max_chars", "max_docs", "max_length", "torch_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.stride is not None and self.stride < 0:
            raise ValueError("--stride must be >= 0")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port must be 1-65535, got {self.port}")
        if self.batch_wait_ms < 0:
            raise ValueError("--batch-wait-ms must be >= 0")
        if self.cpus_per_replica < 0 or self.gpus_per_replica < 0:
            raise ValueError("--cpus-per-replica and --gpus-per-replica must be >= 0")
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            raise ValueError(f"--min-score must be between 0 and 1, got {self.min_score}")
        self.replica_range()
        parse_resources(self.resources_per_replica)

    def replica_range(self) -> tuple[int, int]:
        """``"2"`` -> (2, 2); ``"1-4"`` -> (1, 4)."""
        return parse_range(self.replicas, "--replicas")

    @property
    def threads(self) -> int:
        return self.torch_threads or max(1, int(self.cpus_per_replica))

    @property
    def max_body_bytes(self) -> int:
        """A request body's size limit: ``max_docs`` documents of ``max_chars`` 4-byte characters, plus 1 MiB of JSON."""
        return self.max_docs * self.max_chars * 4 + (1 << 20)
