"""jobs.train end to end on the local Ray cluster: 2 CPU workers, tiny models, synthetic CoNLL data."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from jobs import evaluate as evaluate_job
from jobs import train as train_job
from jobs.cli import ConfigError
from ner_core import EncoderDecoderTagger
from ner_core.sample_data import make_sentences, to_conll, write_conll

pytestmark = pytest.mark.slow  # every test trains on the Ray cluster


@pytest.fixture(scope="module")
def conll_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("conll_sample")
    write_conll(root / "train.txt", make_sentences(400, seed=1))
    write_conll(root / "dev.txt", make_sentences(40, seed=2))
    return root


def _argv(tiny_dirs, data, output, *extra):
    return [
        "--train", str(data / "train.txt"), "--dev", str(data / "dev.txt"), "--output", str(output),
        "--arch", "encoder-decoder", "--encoder", tiny_dirs["distilbert"], "--decoder", tiny_dirs["bert"],
        "--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32",
        "--num-workers", "2", "--cpus-per-worker", "0.5", "--seed", "7", "--case-markers", "true", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_dirs, conll_sample, tmp_path_factory):
    output = tmp_path_factory.mktemp("train_out") / "model"
    assert train_job.main(_argv(tiny_dirs, conll_sample, output)) == 0
    return output


def test_train_writes_a_loadable_model_and_metrics(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    for epoch in metrics["epochs"]:
        assert 0.0 <= epoch["dev_f1"] <= 1.0 and epoch["tokens_per_s"] > 0
        assert set(epoch["dev_per_type"]) == {"LOC", "MISC", "ORG", "PER"}
    assert metrics["best_dev_f1"] == max(e["dev_f1"] for e in metrics["epochs"])
    assert metrics["best_dev_f1"] > 0.3  # it learned something from 400 easy sentences
    assert metrics["wall_time_s"] > 0 and metrics["train_tokens_per_s"] > 0
    labels = json.loads((trained / "labels.json").read_text())
    assert labels == ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    model = EncoderDecoderTagger.from_pretrained(trained)
    assert [model.config.id2label[i] for i in range(9)] == labels
    assert (trained / "tokenizer.json").exists() and (trained / "model.safetensors").exists()


def test_evaluate_reproduces_the_reported_dev_f1(trained, conll_sample, tmp_path):
    out = tmp_path / "eval.json"
    assert evaluate_job.main(["--model", str(trained), "--data", str(conll_sample / "dev.txt"), "--json", str(out)]) == 0
    reported = json.loads((trained / "metrics.json").read_text())["best_dev_f1"]
    assert json.loads(out.read_text())["f1"] == reported


def test_each_worker_streams_only_its_own_share_of_the_windows(trained):
    """Ray Data's streaming split: per epoch every rank sees total // workers windows, none twice,
    and runs the same number of steps (the split's remainder, under one window per rank, is dropped)."""
    metrics = json.loads((trained / "metrics.json").read_text())
    for e in metrics["epochs"]:
        total, seen = e["train_windows"], e["windows_per_rank"]
        assert total >= 400 and len(seen) == 2 and seen == [total // 2] * 2 and sum(seen) + total % 2 == total
    steps = -(-(metrics["epochs"][0]["train_windows"] // 2) // 8)  # batch 8, one step per batch
    assert [e["step"] for e in metrics["epochs"]] == [steps, 2 * steps]
    assert metrics["epochs"][-1]["lr"] == 0.0  # the linear schedule ends with the run


def _checkpoint_registered(run_dir, epoch: int):
    """Whether Ray Train has recorded ``epoch``'s checkpoint (what --resume starts from)."""
    snapshot = run_dir / "train" / "checkpoint_manager_snapshot.json"
    return lambda: snapshot.exists() and f"epoch_{epoch:03d}" in snapshot.read_text()


def test_killed_run_resumes_to_the_same_result(ray_cluster, ray_head, tiny_dirs, conll_sample, trained, tmp_path):
    """A worker process killed after the first checkpoint, then --resume: same epochs, none repeated, same F1 as uninterrupted."""
    import torch

    from conftest import TrainingWorkerKiller

    output = tmp_path / "model"
    with TrainingWorkerKiller(_checkpoint_registered(output / "_ray", 0), ray_head["dashboard"]) as killer:
        with pytest.raises(Exception, match="worker process has died"):
            train_job.main(_argv(tiny_dirs, conll_sample, output, "--max-failures", "0"))
    assert killer.killed and not (output / "metrics.json").exists()
    with pytest.raises(ConfigError, match="pass --resume"):
        train_job.main(_argv(tiny_dirs, conll_sample, output))
    state = torch.load(output / "_ray" / "train" / "epoch_000" / "train_state.pt", weights_only=True)
    assert train_job.main(_argv(tiny_dirs, conll_sample, output, "--resume")) == 0
    resumed = json.loads((output / "metrics.json").read_text())
    uninterrupted = json.loads((trained / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [0, 1]
    assert resumed["epochs"][0] == json.loads(state["history"])[0]  # epoch 0 from the checkpoint, not trained again
    # determinism: same seed and config -> the same dev F1, epoch by epoch
    assert [e["dev_f1"] for e in resumed["epochs"]] == [e["dev_f1"] for e in uninterrupted["epochs"]]


@pytest.fixture(scope="module")
def capped_crf(ray_cluster, tiny_dirs, tmp_path_factory):
    """An encoder tagger with a CRF head, --max-steps 10 past --epochs 1, and no resource flags;
    yields its folder (data, model) and the console's plan."""
    root = tmp_path_factory.mktemp("capped_crf")
    write_conll(root / "train.txt", make_sentences(60, seed=3))
    write_conll(root / "dev.txt", make_sentences(10, seed=4))
    argv = [
        "--train", str(root / "train.txt"), "--dev", str(root / "dev.txt"), "--output", str(root / "model"), "--head", "crf",
        "--arch", "encoder", "--encoder", tiny_dirs["bert"], "--epochs", "1", "--batch-size", "8", "--max-length", "32",
        "--max-steps", "10",  # 60 sentences of about a window each: 8 steps of 8 per epoch, so it ends in the second
    ]  # fmt: skip
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        assert train_job.main(argv) == 0
    return root, capture.getvalue()


def test_max_steps_stops_there_and_auto_workers_fit_the_machine_with_no_flags(capped_crf):
    """--max-steps past --epochs: HF's meaning (more epochs, the schedule ends at the last step,
    a mid-epoch stop evaluated and checkpointed); no resource flags: one worker on the 2-CPU
    test cluster, leaving room for Ray Data's tasks."""
    root, plan = capped_crf
    max_steps = 10
    assert "1 worker(s) x 1.5 CPU, 2 torch thread(s) each (auto: one per node (1 node), each node's CPUs less 0.5 for Ray Data tasks)" in plan
    assert f"{max_steps} steps (--max-steps)" in plan
    metrics = json.loads((root / "model" / "metrics.json").read_text())
    assert (metrics["config"]["num_workers"], metrics["config"]["cpus_per_worker"], metrics["config"]["torch_threads"]) == (1, 1.5, 2)
    epochs = metrics["epochs"]
    windows = epochs[0]["train_windows"]
    steps_per_epoch = -(-windows // 8)
    assert 60 <= windows < 72 and steps_per_epoch < max_steps
    assert [(e["epoch"], e["step"]) for e in epochs] == [(0, steps_per_epoch), (1, max_steps)]
    # the last epoch stops after the batches up to --max-steps
    assert [e["windows_per_rank"] for e in epochs] == [[windows], [(max_steps - steps_per_epoch) * 8]]
    assert epochs[-1]["lr"] == 0.0 and epochs[0]["lr"] > 0  # the schedule's length is --max-steps
    assert "dev_f1" in epochs[-1] and (root / "model" / "_ray" / "train" / "epoch_001").exists()


@pytest.mark.parametrize(
    "content,message",
    [
        ("EU B-ORG\nrejects O\n\nGerman B-MISC extra\n", r"train.txt:4: expected 2 columns, found 3"),
        ("EU B-ORG\nrejects O\ncall I-PER\n", r"train.txt:3: invalid IOB2 sequence: I-PER"),
        ("EU B-ORG\nrejects 0\n", r"train.txt:2: malformed tag '0'"),
        ("\n\n", r"train.txt:0: no sentences"),
    ],
)
def test_bad_training_data_names_file_and_line(ray_cluster, tiny_dirs, conll_sample, tmp_path, content, message):
    (tmp_path / "train.txt").write_text(content)
    (tmp_path / "dev.txt").write_text((conll_sample / "dev.txt").read_text())
    with pytest.raises(ConfigError, match=message):
        train_job.main(_argv(tiny_dirs, tmp_path, tmp_path / "out"))


def test_dev_labels_must_be_known(ray_cluster, tiny_dirs, conll_sample, tmp_path):
    (tmp_path / "train.txt").write_text("EU B-ORG\nrejects O\n")
    (tmp_path / "dev.txt").write_text("Paris B-LOC\n")
    with pytest.raises(ConfigError, match=r"dev data .* has labels \['B-LOC', 'I-LOC'\] never seen"):
        train_job.main(_argv(tiny_dirs, tmp_path, tmp_path / "out"))


def test_repair_invalid_is_opt_in(ray_cluster):
    from pipelines.labelled_data import read_labelled

    import tempfile, os

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.txt")
        with open(path, "w") as fh:
            fh.write("EU I-ORG\nrejects O\n")
        rows = read_labelled(path, repair_invalid=True).take_all()
    assert rows[0]["tags"] == ["B-ORG", "O"]


@pytest.fixture(scope="module")
def context_model(ray_cluster, tiny_dirs, tmp_path_factory):
    """A tagger trained with --context-length 16 on news in -DOCSTART- documents, and its data."""
    root = tmp_path_factory.mktemp("context")
    docs = make_sentences(120, seed=5)
    (root / "train.txt").write_text("".join("-DOCSTART- O\n\n" + to_conll(docs[i : i + 6]) + "\n" for i in range(0, len(docs), 6)))
    (root / "dev.txt").write_text("".join("-DOCSTART- O\n\n" + to_conll(make_sentences(6, seed=50 + i)) + "\n" for i in range(4)))
    argv = _argv(tiny_dirs, root, root / "model", "--context-length", "16")
    argv[argv.index("--epochs") + 1] = "1"
    assert train_job.main(argv) == 0
    return root


def test_document_context_is_trained_and_evaluated_the_same_way(context_model, tmp_path):
    """--context-length: sentences read with their -DOCSTART- neighbours in training, dev scoring and jobs.evaluate."""
    output, dev = context_model / "model", context_model / "dev.txt"
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["context_length"] == 16
    out = tmp_path / "eval.json"
    assert evaluate_job.main(["--model", str(output), "--data", str(dev), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["f1"] == metrics["best_dev_f1"]
    assert json.loads(out.read_text())["settings"]["context_length"] == 16  # from the model's metrics.json
    out_plain = tmp_path / "eval_plain.json"
    assert evaluate_job.main(["--model", str(output), "--data", str(dev), "--json", str(out_plain), "--context-length", "0"]) == 0
    assert json.loads(out_plain.read_text())["settings"]["context_length"] == 0


def test_context_on_data_without_documents_stops_before_training(ray_cluster, tiny_dirs, conll_sample, tmp_path):
    """A corpus copy with no -DOCSTART- lines gives no context: asking for it is an error, not a silent no-op."""
    with pytest.raises(ConfigError, match=r"--context-length 16: --train .*train.txt has no -DOCSTART- document markers.*--documents datelines"):
        train_job.main(_argv(tiny_dirs, conll_sample, tmp_path / "out", "--context-length", "16"))
    with pytest.raises(ConfigError, match=r"--context-length 16: --train .*train.txt has neither -DOCSTART- document markers nor Reuters datelines"):
        train_job.main(_argv(tiny_dirs, conll_sample, tmp_path / "out", "--context-length", "16", "--documents", "datelines"))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_documents_from_datelines_give_context_to_a_corpus_without_markers(ray_cluster, tmp_path):
    """CoNLL-2003 copies that lost -DOCSTART-: --documents datelines finds the stories again."""
    from pipelines.labelled_data import read_labelled

    stories = ["EU rejects German call .", "BRUSSELS 1996-08-22", "The Commission said .", "Hendrix draft sells .", "LONDON 1996-08-22", "It was sold ."]
    path = tmp_path / "train.txt"
    path.write_text("\n".join("".join(f"{w} O\n" for w in s.split()) for s in stories))
    by_markers = read_labelled(str(path), context_words=8).take_all()
    assert all(not r["context_left"] and not r["context_right"] for r in by_markers)
    rows = sorted(read_labelled(str(path), context_words=8, documents="datelines").take_all(), key=lambda r: r["line"])
    assert rows[2]["context_left"] == ["EU", "rejects", "German", "call", ".", "BRUSSELS", "1996-08-22"]
    assert rows[2]["context_right"] == []  # the next story is not its context
    assert rows[3]["context_right"] == ["LONDON", "1996-08-22", "It", "was", "sold", "."]
    with pytest.raises(ValueError, match="documents must be one of markers, datelines"):
        read_labelled(str(path), documents="guess")


def test_evaluate_warns_when_the_data_has_no_context_for_a_context_model(context_model, tmp_path, capsys):
    model = context_model / "model"
    write_conll(tmp_path / "plain.txt", make_sentences(6, seed=52))
    capsys.readouterr()
    assert evaluate_job.main(["--model", str(model), "--data", str(tmp_path / "plain.txt")]) == 0
    assert "has no -DOCSTART- document markers: scored without context" in capsys.readouterr().out
    # the same model on news whose stories --documents datelines can find again: scored with context
    news = tmp_path / "news.txt"
    news.write_text(to_conll([(["Paris", "wins", "."], ["B-LOC", "O", "O"]), (["PARIS", "1996-08-22"], ["B-LOC", "O"]), (["It", "rained", "."], ["O", "O", "O"])]))
    out = tmp_path / "news.json"
    assert evaluate_job.main(["--model", str(model), "--data", str(news), "--documents", "datelines", "--json", str(out)]) == 0
    assert "scored without context" not in capsys.readouterr().out
    assert json.loads(out.read_text())["settings"]["documents"] == "datelines"


def _tensorboard_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Scalars from TensorBoard event files, read with the record framing and protobuf TensorBoard uses."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_training_writes_a_report_and_tensorboard_curves_of_its_own_numbers(trained):
    import re

    metrics = json.loads((trained / "metrics.json").read_text())
    page = (trained / "report.html").read_text()
    epochs = metrics["epochs"]
    # the curves: one point per epoch for the loss and for dev precision/recall/F1, at the run's values
    for series, key in (("train loss", "train_loss"), ("F1", "dev_f1"), ("precision", "dev_precision"), ("recall", "dev_recall")):
        points = re.findall(rf'<circle [^>]*data-series="{series}" data-x="(\d+)" data-y="([^"]+)"', page)
        assert [(int(x), float(y)) for x, y in points] == [(e["epoch"] + 1, pytest.approx(e[key], rel=1e-5)) for e in epochs]
        assert f'<polyline class="series" data-series="{series}"' in page
    # the per-type table and the confusion matrix of the selected epoch
    best = next(e for e in epochs if e["epoch"] == metrics["best_epoch"])
    assert f"epoch {best['epoch'] + 1} (selected)" in page
    for name, m in best["dev_per_type"].items():
        row = re.search(rf'<tr data-type="{name}">(.*?)</tr>', page).group(1)
        assert f"{m['f1']:.3f}" in row and f"<td>{m['support']:,}</td>" in row
    confusion = best["dev_confusion"]
    assert confusion["labels"] == ["LOC", "MISC", "ORG", "PER", "(none)"]
    for i, gold in enumerate(confusion["labels"][:-1]):
        # every gold entity is in its type's row once: the row sums to the type's support
        assert sum(confusion["matrix"][i]) == best["dev_per_type"][gold]["support"]
        cell = re.search(rf'<td data-gold="{gold}" data-pred="{gold}"[^>]*>(\d+)</td>', page).group(1)
        assert int(cell) == confusion["matrix"][i][i]
    # TensorBoard: the same dev scores per epoch, and the loss as training went
    scalars = _tensorboard_scalars(trained / "tensorboard")
    assert scalars["dev/f1"] == [(e["epoch"] + 1, pytest.approx(e["dev_f1"], rel=1e-5)) for e in epochs]
    assert scalars["epoch/train_loss"] == [(e["epoch"] + 1, pytest.approx(e["train_loss"], rel=1e-5)) for e in epochs]
    assert len(scalars["train/loss"]) >= len(epochs)


def test_a_trained_tagger_starts_a_run_on_another_label_set(ray_cluster, trained, tmp_path):
    """Transfer: the 9-label CoNLL-typed tagger fine-tuned on plain IOB data with a new head.

    At lr 0 nothing moves, so the saved model must be the starting tagger with only its
    classifier new: every other tensor equal, 3 outputs named after the data, and the
    starting tagger's architecture, decoder attention and case-marker tokenizer. The path
    is relative, as typed: the workers, which run elsewhere, still find it."""
    from safetensors.torch import load_file

    data = tmp_path / "iob"
    write_conll(data / "train.txt", [(t, [g.split("-")[0] for g in tags]) for t, tags in make_sentences(60, seed=3)])
    argv = [
        "--train", str(data / "train.txt"), "--output", str(tmp_path / "out"), "--init-from", os.path.relpath(trained),
        "--epochs", "1", "--batch-size", "8", "--lr", "0", "--num-workers", "2", "--cpus-per-worker", "0.5",
    ]  # fmt: skip
    # without --new-head the saved head's labels must be the data's: one line, before training
    with pytest.raises(ConfigError, match=r"predicts labels \['B-LOC', .*\] but the training data has labels \['B', 'I', 'O'\].*--new-head true"):
        train_job.main(argv)
    assert train_job.main([*argv, "--new-head", "true"]) == 0

    before, after = load_file(trained / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)
    assert sorted(k for k in before if before[k].shape != after[k].shape or not before[k].equal(after[k])) == ["classifier.bias", "classifier.weight"]
    assert after["classifier.weight"].shape[0] == 3 and before["classifier.weight"].shape[0] == 9
    model = EncoderDecoderTagger.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "O", 1: "B", 2: "I"}
    assert model.config.decoder_attention == EncoderDecoderTagger.from_pretrained(trained).config.decoder_attention
    config = json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]
    assert (config["arch"], config["case_markers"], config["init_from"]) == ("encoder-decoder", True, str(trained))


def test_an_encoder_that_cannot_feed_the_decoder_stops_before_training(ray_cluster, trained, tiny_dirs, conll_sample, tmp_path):
    """Two halves that cannot make one tagger: one line naming them, before any Ray work.

    An encoder-only tagger trained with case markers has two tokens more than a plain
    checkpoint, so its encoder cannot feed that checkpoint as a decoder; and a whole
    encoder-decoder tagger is not an encoder (it is started from with --init-from)."""
    from ner_core.labels import LabelMap
    from ner_core.tagger import build_tagger, load_tokenizer, save_tagger

    cased = load_tokenizer(tiny_dirs["bert"], case_markers=True)
    save_tagger(build_tagger("encoder", tiny_dirs["bert"], labels=LabelMap(("O", "B-PER", "I-PER")), vocab_size=len(cased)), cased, tmp_path / "cased_tagger")
    argv = _argv(tiny_dirs, conll_sample, tmp_path / "out")
    encoder = argv.index("--encoder") + 1
    argv[encoder] = str(tmp_path / "cased_tagger")
    with pytest.raises(ConfigError, match=rf"encoder .*cased_tagger has vocab_size={len(cased)} but decoder .*bert has vocab_size={len(cased) - 2}: the decoder reads the encoder's token ids"):
        train_job.main(argv)
    argv[encoder] = str(trained)
    with pytest.raises(ConfigError, match=r"encoder .*model is a whole encoder-decoder tagger, not one half of one; .*--init-from"):
        train_job.main(argv)
    assert not (tmp_path / "out").exists()


def test_training_saves_its_inference_settings_and_a_temperature_fitted_on_dev(trained, conll_sample, tmp_path):
    saved = json.loads((trained / "inference.json").read_text())
    # the window the model trained with; the default overlap (32) fitted to its 30 subwords of room
    assert (saved["max_length"], saved["stride"], saved["context_length"]) == (32, 15, 0)
    calibration = json.loads((trained / "metrics.json").read_text())["calibration"]
    assert saved["temperature"] == calibration["temperature"] > 0
    assert 0 <= calibration["ece"] <= 1 and [r["threshold"] for r in calibration["thresholds"]] == [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert sum(b["count"] for b in calibration["bins"]) == calibration["entities"] > 0
    page = (trained / "report.html").read_text()
    assert "Entity scores: reliability" in page and page.count('class="bin"') == sum(1 for b in calibration["bins"] if b["count"])
    # jobs.evaluate scores with the same temperature and says how the scores hold up
    out = tmp_path / "eval.json"
    assert evaluate_job.main(["--model", str(trained), "--data", str(conll_sample / "dev.txt"), "--json", str(out), "--report", str(tmp_path / "report")]) == 0
    evaluated = json.loads(out.read_text())["calibration"]
    assert evaluated["temperature"] == saved["temperature"] and evaluated["ece"] == pytest.approx(calibration["ece"])
    assert "Entity scores: reliability" in (tmp_path / "report" / "report.html").read_text()


def test_a_crf_head_trains_and_is_scored_the_same_way_by_evaluate(capped_crf, tmp_path):
    root, _ = capped_crf
    output = root / "model"
    assert json.loads((output / "config.json").read_text())["tagger_head"] == "crf"
    out = tmp_path / "eval.json"
    assert evaluate_job.main(["--model", str(output), "--data", str(root / "dev.txt"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["f1"] == json.loads((output / "metrics.json").read_text())["best_dev_f1"]
