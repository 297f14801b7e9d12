"""Which engine runs a saved tagger's forward pass: torch, or ONNX Runtime in fp32 or int8.

Why: on CPU, bulk tagging and evaluation spend nearly all their time in the model's
forward pass. ONNX Runtime runs the same graph faster in fp32 (fused kernels, no
Python per op) and much faster with int8 weights (dynamic quantisation, per output
channel), at a small, measurable cost in accuracy. Which engine to use is one setting,
``--runtime``, shared by ``jobs.evaluate`` and ``jobs.tag`` so a model is scored on the
engine it is served with (docs/performance.md has the figures).

- ``torch`` (default): the model as trained, any device, any ``--mixed-precision``.
- ``onnx``: ONNX Runtime, fp32, CPU. The same predictions as torch (up to float rounding).
- ``onnx-int8``: ONNX Runtime with the weights of every linear layer in int8, one scale
  per output channel, activations quantised on the fly; the classifier stays fp32
  (it is tiny and sits where rounding errors turn straight into different labels).

``load_runtime`` returns what ``ner_core.predictor.Predictor`` needs from a model:
``model(input_ids=..., attention_mask=...).logits`` (a torch tensor), ``config.id2label``,
``device``, ``eval()`` and ``to(device)``. The ONNX files are exported once per model
version and cached under ``~/.cache/ray-ner/onnx/<key>/`` (not in the model folder: it may
be read-only, and jobs.tag hashes its files to know the model). ``<key>`` hashes the weights,
the config and the export recipe, so a retrained model at the same path
is exported again instead of being served from a stale file. No Ray here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and transformers load on use: jobs check --runtime in processes that never run a model
    import torch

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx", "onnx-int8")
# Bump when the export or quantisation recipe changes: cached files made by another
# recipe are then rebuilt rather than reused.
RECIPE = "1"
ONNX_OPSET = 18
_WEIGHT_FILES = ("model.safetensors", "config.json")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ray-ner", "onnx")


ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # the ray-ner[onnx] extra


class MissingExtraError(ValueError):
    """An optional engine's packages are not installed; the message names the extra."""


def require_onnx(runtime: str) -> None:
    """The ONNX packages importable, or one line saying which extra installs them."""
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"--runtime {runtime} needs {', '.join(missing)}: pip install 'ray-ner[onnx]'")


def check_runtime(runtime: str, mixed_precision: str = "auto") -> None:
    """A known engine, installed, and no autocast asked of one that has its own arithmetic."""
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime != "torch" and mixed_precision in ("bf16", "fp16"):
        raise ValueError(f"--mixed-precision {mixed_precision} is for --runtime torch; --runtime {runtime} sets its own precision")
    if runtime != "torch":
        require_onnx(runtime)


def load_runtime(model_dir: str | os.PathLike, runtime: str = "torch", *, threads: int | None = None, cache_dir: str | None = None):
    """The saved tagger at ``model_dir`` behind the chosen engine (see the module docstring).

    ``threads``: ONNX Runtime's intra-op threads (default: torch's current setting, which
    the jobs set from the CPUs they reserve). Ignored for ``torch``.
    """
    import torch

    from ner_core.tagger import load_tagger, resolve_model_path

    check_runtime(runtime)
    if runtime == "torch":
        return load_tagger(model_dir)
    model_dir = resolve_model_path(model_dir)
    path = onnx_model_file(model_dir, quantized=runtime == "onnx-int8", cache_dir=cache_dir)
    from transformers import AutoConfig

    import ner_core.model  # noqa: F401  (registers the encoder-decoder config with AutoConfig)

    from ner_core.crf import load_crf

    # the session returns emissions only; a CRF head decodes them (ner_core.crf.decode_words)
    return OnnxTagger(path, AutoConfig.from_pretrained(model_dir), threads=threads or torch.get_num_threads(), crf=load_crf(model_dir))


class OnnxTagger:
    """An ONNX Runtime session that answers like a ``*ForTokenClassification`` model in eval mode."""

    def __init__(self, path: str, config, threads: int = 1, crf=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.path = path
        self.config = config
        self.crf = crf  # the tagger's ner_core.crf.CRF head, or None (linear)

    @property
    def device(self) -> "torch.device":
        import torch

        return torch.device("cpu")

    def eval(self) -> "OnnxTagger":
        return self

    def to(self, device) -> "OnnxTagger":
        import torch

        if torch.device(device).type != "cpu":
            raise ValueError(f"the ONNX runtimes run on CPU; use --runtime torch on {device}")
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any):
        import torch
        from transformers.modeling_outputs import TokenClassifierOutput

        feed = {"input_ids": input_ids.to(torch.int64).numpy(), "attention_mask": attention_mask.to(torch.int64).numpy()}
        (logits,) = self.session.run(["logits"], feed)
        return TokenClassifierOutput(logits=torch.from_numpy(logits))


# --- export and cache --------------------------------------------------------------


def model_key(model_dir: str) -> str:
    """A short hash of the weights, the config and the export recipe (what the ONNX file depends on)."""
    digest = hashlib.sha256(f"recipe={RECIPE};opset={ONNX_OPSET}".encode())
    for name in _WEIGHT_FILES:
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{model_dir}: no {name} (the ONNX runtimes need a model saved with safetensors)")
        digest.update(name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def onnx_model_file(model_dir: str, quantized: bool, cache_dir: str | None = None) -> str:
    """The exported (and, for ``quantized``, int8) ONNX file for ``model_dir``, made once and cached.

    The cache is ``cache_dir`` or ``~/.cache/ray-ner/onnx``, one folder per ``model_key``;
    never the model's own folder, which may be read-only, and whose files are the model's
    identity for ``jobs.tag`` (a file added there would make a resumed job see another model).
    Several processes (tagging actors) may ask at once: one exports under a file lock, the
    others wait and reuse its file. Files are written under a temporary name and renamed,
    so a reader never sees half of one.
    """
    folder = os.path.join(cache_dir or DEFAULT_CACHE, model_key(model_dir))
    os.makedirs(folder, exist_ok=True)
    fp32, int8 = os.path.join(folder, "model.onnx"), os.path.join(folder, "model-int8.onnx")
    want = int8 if quantized else fp32
    if os.path.isfile(want):
        return want
    with _locked(os.path.join(folder, ".lock")):
        if not os.path.isfile(fp32):
            log.info("exporting %s to ONNX (once per model version): %s", model_dir, fp32)
            _atomic_write(fp32, lambda tmp: export_onnx(model_dir, tmp))
        if quantized and not os.path.isfile(int8):
            log.info("quantising %s to int8: %s", fp32, int8)
            _atomic_write(int8, lambda tmp: quantize_int8(fp32, tmp))
    return want


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write(path: str, make) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        make(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def export_onnx(model_dir: str, path: str) -> None:
    """``torch.onnx.export`` of the saved tagger, with batch and sequence length left free.

    The example batch has a padded row and a length that is neither 0 nor 1 in any axis,
    so the exporter keeps both axes symbolic and the masking path in the graph.
    """
    import torch

    from ner_core.tagger import load_tagger

    class LogitsOnly(torch.nn.Module):
        """The tagger with tensors in and logits out: the exporter cannot return a ModelOutput."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    model = load_tagger(model_dir).eval()
    ids = torch.full((2, 8), 5, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    axes = {0: "batch", 1: "sequence"}
    # the exporter prints its progress and warns about ops it does not need; a job's console
    # should show neither (the export is logged once by onnx_model_file)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LogitsOnly(model),
            (ids, mask),
            path,
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": axes},
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )


def quantize_int8(fp32_path: str, path: str) -> None:
    """Dynamic int8 quantisation of the linear layers' weights (per output channel), classifier kept fp32.

    Only matrix products with a constant weight are quantised (never attention's
    query-key products); activations get a scale per call.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    keep = classifier_nodes(onnx.load(fp32_path, load_external_data=False))
    # the quantiser logs a line per tensor and a pre-processing hint on the root logger;
    # a job's console is no place for them (the step itself is logged by onnx_model_file)
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(
            fp32_path,
            path,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=keep,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        logging.disable(logging.NOTSET)


def classifier_nodes(model) -> list[str]:
    """The weight products that feed the ``logits`` output directly (through Add/reshape ops only)."""
    consts = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    passthrough = {"Add", "Reshape", "Identity", "Cast", "Squeeze", "Unsqueeze"}
    found, todo, seen = [], ["logits"], set()
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in ("MatMul", "Gemm") and any(x in consts for x in node.input):
            found.append(node.name)
        elif node.op_type in passthrough:
            todo.extend(node.input)
    return found
