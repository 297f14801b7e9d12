"""Settings of the online tagger (``ServeConfig``): the ``ray-ner serve`` flags and ``serve deploy`` args.

One dataclass for both: ``jobs.serve`` builds its flags from the fields (``jobs.cli``) and
``pipelines.serving.app.build_app`` takes the same names from a Serve config file's ``args``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ner_core.precision import check_mixed_precision
from ner_core.runtime import RUNTIMES, check_runtime
from pipelines.cluster import parse_range, parse_resources


def _help(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class ServeConfig:
    """Every setting of ``ray-ner serve`` and its default."""

    model: str | None = field(default=None, metadata=_help("trained model directory (local or s3://, copied once per node)"))
    host: str = field(default="127.0.0.1", metadata=_help("address the HTTP server binds (0.0.0.0 exposes it to the network)"))
    port: int = field(default=8000, metadata=_help("HTTP port"))
    app_name: str = field(default="ray-ner", metadata=_help("Serve application name"))
    replicas: str = field(default="1", metadata=_help("replicas: N, or MIN-MAX to autoscale on requests in flight"))
    cpus_per_replica: float = field(default=1.0, metadata=_help("CPUs reserved per replica (fractional allowed)"))
    gpus_per_replica: float = field(default=0.0, metadata=_help("GPUs per replica; fractional to share a GPU"))
    resources_per_replica: str | dict[str, float] | None = field(default=None, metadata=_help("custom Ray resources per replica, NAME=AMOUNT[,...] (e.g. gpu_node=1)"))
    torch_threads: int | None = field(default=None, metadata=_help("model threads per replica (default: its CPUs, at least 1)"))
    # Documents, not requests: a request of 32 texts is 32 items of the batch.
    max_batch_size: int = field(default=32, metadata=_help("documents per model call, at most (@serve.batch)"))
    batch_wait_ms: float = field(default=5.0, metadata=_help("how long a model call waits for more documents before it starts"))
    # Serve's default (5) would cap a replica's batch at 5 one-document requests.
    max_ongoing_requests: int = field(default=64, metadata=_help("requests a replica takes at once; more wait in the proxy"))
    mixed_precision: str = field(default="auto", metadata=_help("auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 (GPU) | none"))
    runtime: str = field(default="torch", metadata=_help(f"model engine: {' | '.join(RUNTIMES)}"))
    max_length: int | None = field(default=None, metadata=_help("subword window length (default: the model's own setting)"))
    stride: int | None = field(default=None, metadata=_help("subword overlap between windows of long documents (default: the model's)"))
    min_score: float | None = field(default=None, metadata=_help("drop entities scored under this (their tokens become O), as jobs.tag --min-score; a request's min_score overrides it (default: keep all)"))
    max_chars: int = field(default=100_000, metadata=_help("characters per document, at most (longer: 413)"))
    max_docs: int = field(default=256, metadata=_help("documents per request, at most (more: 413)"))

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
