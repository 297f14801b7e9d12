"""--runtime onnx | onnx-int8: the same tagger through ONNX Runtime, exported once per model version."""

from __future__ import annotations

import json
import os

import pyarrow.dataset as pads
import pytest
import torch

from ner_core.inference import InferenceSettings
from ner_core.predictor import Predictor
from ner_core.labels import LabelMap
from ner_core.runtime import check_runtime, load_runtime
from ner_core.tagger import build_tagger, load_tagger, load_tokenizer, save_tagger
from tests.conftest import CONLL_LABELS


@pytest.fixture(scope="module")
def tiny_encoder_tagger(tiny_dirs, tmp_path_factory) -> str:
    """A saved tiny encoder-only tagger (``AutoModelForTokenClassification``), CoNLL labels."""
    torch.manual_seed(5)
    model = build_tagger("encoder", tiny_dirs["distilbert"], labels=LabelMap(tuple(CONLL_LABELS)))
    path = tmp_path_factory.mktemp("tiny_encoder_tagger") / "model"
    save_tagger(model, load_tokenizer(tiny_dirs["distilbert"]), path)
    return str(path)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> str:
    """Exports go here rather than into ~/.cache, so each test run starts from none."""
    return str(tmp_path_factory.mktemp("onnx_cache"))


def _padded_batch():
    torch.manual_seed(0)
    ids = torch.randint(1000, 5000, (3, 13))  # ordinary word pieces of the MiniLM vocabulary
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # padded rows: the masked positions must not change the others
    mask[2, 9:] = 0
    return ids, mask


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["encoder-decoder", "encoder"])
def test_onnx_runtimes_predict_what_torch_predicts(arch, tiny_tagger, tiny_encoder_tagger, onnx_cache):
    model_dir = tiny_tagger if arch == "encoder-decoder" else tiny_encoder_tagger
    reference = load_tagger(model_dir).eval()
    ids, mask = _padded_batch()
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()

    fp32 = load_runtime(model_dir, "onnx", threads=1, cache_dir=onnx_cache)
    logits = fp32(input_ids=ids, attention_mask=mask).logits
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits[real], expected[real], atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.argmax(-1)[real], expected.argmax(-1)[real])
    one = fp32(input_ids=ids[:1, :4], attention_mask=mask[:1, :4]).logits  # batch and length are free axes
    assert one.shape == (1, 4, len(CONLL_LABELS))

    int8 = load_runtime(model_dir, "onnx-int8", threads=1, cache_dir=onnx_cache)
    assert int8.path != fp32.path
    same = (int8(input_ids=ids, attention_mask=mask).logits.argmax(-1) == expected.argmax(-1))[real]
    assert same.float().mean() >= 0.9  # int8 weights move near-ties; a trained model's F1 is the real check

    # the way jobs.evaluate and the tagging actors use it: Predictor with the engine in place of the model
    tokenizer = load_tokenizer(model_dir)
    docs = [["Anna", "met", "Bob", "in", "Paris", "."], ["one"], [f"w{i}" for i in range(40)]]
    settings = InferenceSettings(max_length=16, stride=4, batch_size=2)
    assert Predictor(fp32, tokenizer, settings).predict_ids(docs) == Predictor(reference, tokenizer, settings).predict_ids(docs)


@pytest.mark.slow
def test_export_is_cached_and_redone_when_the_weights_change(tiny_encoder_tagger, tmp_path):
    model_dir, cache = tmp_path / "model", str(tmp_path / "cache")
    model = load_tagger(tiny_encoder_tagger)
    save_tagger(model, load_tokenizer(tiny_encoder_tagger), model_dir)
    files_before = sorted(p.name for p in model_dir.iterdir())

    first = load_runtime(model_dir, "onnx-int8", cache_dir=cache)
    assert first.path.startswith(cache)
    assert sorted(p.name for p in model_dir.iterdir()) == files_before  # the model folder is left as it was
    made = os.stat(first.path).st_mtime_ns
    assert load_runtime(model_dir, "onnx-int8", cache_dir=cache).path == first.path
    assert os.stat(first.path).st_mtime_ns == made  # reused, not exported again

    # "retrained" at the same path: a head that says B-PER everywhere
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0 if label == "B-PER" else 0.0 for label in CONLL_LABELS]))
    save_tagger(model, load_tokenizer(tiny_encoder_tagger), model_dir)
    again = load_runtime(model_dir, "onnx-int8", cache_dir=cache)
    assert again.path != first.path
    ids, mask = _padded_batch()
    assert set(again(input_ids=ids, attention_mask=mask).logits.argmax(-1).flatten().tolist()) == {CONLL_LABELS.index("B-PER")}


def test_unknown_runtime_and_gpu_are_refused(tiny_encoder_tagger, onnx_cache):
    with pytest.raises(ValueError, match="--runtime must be one of torch, onnx, onnx-int8"):
        check_runtime("tensorrt")
    with pytest.raises(ValueError, match="run on CPU"):
        Predictor(load_runtime(tiny_encoder_tagger, "onnx", cache_dir=onnx_cache), load_tokenizer(tiny_encoder_tagger), device="cuda")


@pytest.mark.slow
def test_evaluate_scores_the_onnx_runtime_like_torch(ray_cluster, tiny_tagger, tmp_path):
    from jobs import evaluate as evaluate_job
    from ner_core.sample_data import make_sentences, write_conll

    write_conll(tmp_path / "dev.txt", make_sentences(30, seed=4))
    scores = {}
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"{runtime}.json"
        assert evaluate_job.main(["--model", tiny_tagger, "--data", str(tmp_path / "dev.txt"), "--json", str(out), "--runtime", runtime]) == 0
        scores[runtime] = json.loads(out.read_text())
    assert scores["onnx"]["settings"]["runtime"] == "onnx"
    assert {k: scores["onnx"][k] for k in ("precision", "recall", "f1", "per_type")} == {k: scores["torch"][k] for k in ("precision", "recall", "f1", "per_type")}


@pytest.mark.slow
def test_tag_job_runs_int8_and_keeps_the_runtime_with_its_output(ray_cluster, tiny_tagger, tmp_path, capsys):
    from jobs import tag as tag_job
    from ner_core.sample_data import make_texts

    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(20, seed=6)))
    base = ["--model", tiny_tagger, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"),
            "--actors", "1", "--cpus-per-actor", "0.5", "--max-length", "24", "--stride", "6"]  # fmt: skip
    assert tag_job.main([*base, "--runtime", "onnx-int8"]) == 0
    manifest = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert manifest["rows_written"] == 20 and manifest["settings"]["runtime"] == "onnx-int8"

    engine = load_runtime(tiny_tagger, "onnx-int8")  # the actor's export, from the cache
    tagger = Predictor(engine, load_tokenizer(tiny_tagger), InferenceSettings(max_length=24, stride=6))
    rows = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().to_pylist()
    assert all(row["labels"] == tagger.predict([row["tokens"]])[0] for row in rows)

    with pytest.raises(SystemExit) as exit_info:  # int8 labels must not be mixed with fp32 ones on resume
        tag_job.run_main(tag_job.main, [*base, "--runtime", "torch"])
    assert exit_info.value.code == 2
    assert "made with runtime='onnx-int8' (now 'torch')" in capsys.readouterr().err.strip().splitlines()[-1]
