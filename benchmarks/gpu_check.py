"""GPU check (issue 10): one CoNLL training epoch and bulk tagging, on one GPU, in under 8 minutes.

    bash benchmarks/gpu_check.sh prepare    # here: copies what the GPU machine lacks into .gpu_assets/
    bash benchmarks/gpu_check.sh run        # there: writes $OUT/gpu_check.json (or bench_out/)

What it measures, each phase with the GPU's mean utilisation (nvidia-smi sampled every 200 ms):

1. **Training**: one epoch of the encoder-decoder tagger on CoNLL-2003 train (case markers,
   windows of 128, length-grouped batches of 32, AdamW, bf16 autocast), the same steps a
   Ray Train worker runs (``pipelines.training.loop``), in one process: tokens/s.
2. **Tagging**: 200,000 CoNLL sentences as raw text (``join_naturally``), split and
   tagged through ``document_from_text`` + ``Predictor`` (what a tagging actor runs) in
   fp32 and bf16 autocast: words/s, against HF ``pipeline("token-classification")`` on
   the same GPU at its best batch size (on a 20,000-sentence sample).

The model is MiniLM-sized (6 layers, 384 wide, the packaged MiniLM's config and tokenizer)
with random weights: speed does not depend on the weights, and the 90 MB packaged weights
do not fit the device's 64 MiB carry. Ray is not on the GPU image either (its wheel is over
that limit), so this measures the model-side limit that the Ray jobs wrap.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class GpuSampler:
    """Mean GPU utilisation over a phase, from ``nvidia-smi`` every 200 ms."""

    def __init__(self):
        self.samples: list[int] = []
        self._proc = subprocess.Popen(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        for line in self._proc.stdout:
            line = line.strip().split(",")[0]
            if line.isdigit():
                self.samples.append(int(line))

    def mark(self) -> int:
        return len(self.samples)

    def mean_since(self, mark: int) -> float | None:  # noqa: D401
        window = self.samples[mark:]
        return sum(window) / len(window) if window else None

    def stop(self):
        self._proc.terminate()


class NoGpu(GpuSampler):
    """The CPU smoke test's stand-in: no samples."""

    def __init__(self):
        self.samples = []

    def stop(self):
        pass


def sentences(path: str):
    from ner_core.conll import read_conll

    return read_conll(path)


def build(assets: str, labels):
    from transformers import AutoConfig

    from ner_core.model import EncoderDecoderTagger, EncoderDecoderTaggerConfig
    from ner_core.tagger import load_tokenizer

    tokenizer = load_tokenizer(assets, case_markers=True)
    enc = AutoConfig.from_pretrained(assets)
    enc.vocab_size = len(tokenizer)
    config = EncoderDecoderTaggerConfig(
        encoder=enc.to_dict(), decoder=enc.to_dict(), num_labels=labels.num_labels,
        id2label=labels.id2label, label2id=labels.label2id, pad_token_id=tokenizer.pad_token_id,
    )
    return EncoderDecoderTagger(config), tokenizer


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_epoch(model, tokenizer, labels, data, gpu, device="cuda", limit=None) -> dict:
    import torch

    from ner_core.alignment import encode_batch, pad_windows
    from ner_core.labels import convert_scheme

    sents = sentences(os.path.join(data, "train.txt"))[:limit]
    ids = [labels.encode(convert_scheme(s.tags, "IOB1", "IOB2")) for s in sents]
    windows = [w for ws in encode_batch(tokenizer, [s.tokens for s in sents], ids, max_length=128, stride=32) for w in ws]
    windows.sort(key=lambda w: len(w.input_ids))
    batches = [windows[i : i + 32] for i in range(0, len(windows), 32)]
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _sync(device)
    mark, t0, tokens = gpu.mark(), time.perf_counter(), 0
    for batch in batches:
        padded = {k: torch.tensor(v, device=device) for k, v in pad_windows(batch, tokenizer.pad_token_id, lengths_per_octave=8).items()}
        tokens += int(padded["attention_mask"].sum())
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**padded).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"windows": len(windows), "tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "gpu_util_mean": gpu.mean_since(mark)}


def corpus(data: str, n: int) -> list[str]:
    from ner_core.text import join_naturally

    texts = [join_naturally(s.tokens)[0] for split in ("train", "dev") for s in sentences(os.path.join(data, f"{split}.txt"))]
    return [texts[i % len(texts)] for i in range(n)]


def tag(model, tokenizer, texts, dtype, gpu, batch_size=256, device="cuda") -> dict:

    from ner_core.documents import document_from_text
    from ner_core.inference import InferenceSettings
    from ner_core.predictor import Predictor

    model.eval()
    tagger = Predictor(model, tokenizer, InferenceSettings(max_length=128, stride=32, batch_size=batch_size), device=device, autocast_dtype=dtype)
    tagger.predict([document_from_text({"text": t}, "text").words for t in texts[:2048]])  # warm-up
    _sync(device)
    mark, t0, words = gpu.mark(), time.perf_counter(), 0
    for start in range(0, len(texts), 8192):  # as the actors get rows: big length-sorted calls
        docs = [document_from_text({"text": t}, "text").words for t in texts[start : start + 8192]]
        words += sum(len(d) for d in docs)
        tagger.predict(docs)
    _sync(device)
    dt = time.perf_counter() - t0
    return {"dtype": str(dtype), "sentences": len(texts), "words": words, "seconds": dt, "words_per_s": words / dt, "gpu_util_mean": gpu.mean_since(mark)}


def hf_pipeline(model, tokenizer, texts, gpu, device="cuda") -> dict:
    from transformers import pipeline

    nlp = pipeline("token-classification", model=model.float(), tokenizer=tokenizer, device=0 if device == "cuda" else -1, aggregation_strategy="simple")
    best = None
    for bs in (32, 128, 512):
        nlp(texts[:bs], batch_size=bs)
        mark, t0 = gpu.mark(), time.perf_counter()
        nlp(texts, batch_size=bs)
        dt = time.perf_counter() - t0
        words = sum(len(t.split()) for t in texts)
        trial = {"batch_size": bs, "sentences": len(texts), "words": words, "seconds": dt, "words_per_s": words / dt, "gpu_util_mean": gpu.mean_since(mark)}
        print("pipeline", trial, flush=True)
        best = trial if best is None or trial["words_per_s"] > best["words_per_s"] else best
    return best


def main() -> None:
    import torch

    from ner_core.labels import LabelMap, label_list

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=os.path.join(ROOT, ".gpu_assets"))
    ap.add_argument("--sentences", type=int, default=200_000)
    ap.add_argument("--pipeline-sentences", type=int, default=20_000)
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "bench_out"))
    ap.add_argument("--device", default="cuda", help="cpu: a smoke test of this script (use small --sentences/--train-limit)")
    ap.add_argument("--train-limit", type=int, default=None, help="train on the first N sentences only (smoke tests)")
    args = ap.parse_args()
    assert args.device == "cpu" or torch.cuda.is_available(), "no GPU"
    torch.manual_seed(0)
    labels = LabelMap(tuple(label_list(["LOC", "MISC", "ORG", "PER"])))
    data = os.path.join(args.assets, "conll2003")
    gpu = GpuSampler() if args.device == "cuda" else NoGpu()
    started = time.perf_counter()
    results = {"gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu (smoke test)", "torch": torch.__version__}
    model, tokenizer = build(os.path.join(args.assets, "minilm"), labels)
    results["train_epoch"] = train_epoch(model, tokenizer, labels, data, gpu, args.device, args.train_limit)
    print("train", results["train_epoch"], flush=True)
    texts = corpus(data, args.sentences)
    for name, dtype in (("tag_fp32", None), ("tag_bf16", torch.bfloat16)):
        results[name] = tag(model, tokenizer, texts, dtype, gpu, device=args.device)
        print(name, results[name], flush=True)
    results["hf_pipeline_fp32"] = hf_pipeline(model, tokenizer, texts[: args.pipeline_sentences], gpu, args.device)
    base = results["hf_pipeline_fp32"]["words_per_s"]
    results["ratios_vs_pipeline"] = {k: results[k]["words_per_s"] / base for k in ("tag_fp32", "tag_bf16")}
    results["wall_s"] = time.perf_counter() - started
    gpu.stop()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
