"""The user this project is built for first, end to end.

"I saved a BertForTokenClassification decoder with num_labels=3 for my plain IOB
tags (O, B, I: no entity types) and combined it with a DistilBERT encoder; I want a
tagger with 3 outputs." Train on 2 workers, evaluate, then bulk-tag raw text.
"""

from __future__ import annotations

import json

import pytest
from transformers import BertForTokenClassification

from jobs import evaluate as evaluate_job
from jobs import tag as tag_job
from jobs import train as train_job
from jobs.cli import ConfigError
from ner_core.labels import entity_spans
from ner_core.sample_data import make_sentences, write_conll
from ner_core.tagger import load_tagger
from ner_core.text import join_words

pytestmark = pytest.mark.slow  # every test trains or tags on the Ray cluster


def untyped(sentences):
    """The sample corpus with its types dropped: B-PER -> B, I-ORG -> I."""
    return [(tokens, [tag.split("-")[0] for tag in tags]) for tokens, tags in sentences]


@pytest.fixture(scope="module")
def unnamed_decoder(tiny_dirs, tmp_path_factory):
    """Saved the way the user did it: num_labels=3 and no label names (HF calls them LABEL_0..2)."""
    path = tmp_path_factory.mktemp("unnamed_decoder")
    decoder = BertForTokenClassification.from_pretrained(tiny_dirs["bert"], num_labels=3)
    decoder.save_pretrained(path)
    assert decoder.config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}
    return str(path)


@pytest.fixture(scope="module")
def iob_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("iob_data")
    write_conll(root / "train.txt", untyped(make_sentences(400, seed=11)))
    write_conll(root / "dev.txt", untyped(make_sentences(60, seed=12)))
    return root


def _train_args(tiny_dirs, decoder, data, output):
    return [
        "--train", str(data / "train.txt"), "--dev", str(data / "dev.txt"), "--output", str(output),
        "--arch", "encoder-decoder", "--encoder", tiny_dirs["distilbert"], "--decoder", decoder,
        "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--max-length", "32",
        "--num-workers", "1", "--cpus-per-worker", "1", "--seed", "3",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(ray_cluster, tiny_dirs, unnamed_decoder, iob_data, tmp_path_factory):
    output = tmp_path_factory.mktemp("iob_model") / "model"
    assert train_job.main(_train_args(tiny_dirs, unnamed_decoder, iob_data, output)) == 0
    return output


def test_the_saved_three_way_head_is_kept_and_named_after_the_data(trained, unnamed_decoder):
    model = load_tagger(trained)
    assert model.classifier.out_features == 3
    assert model.config.id2label == {0: "O", 1: "B", 2: "I"}
    assert json.loads((trained / "labels.json").read_text()) == ["O", "B", "I"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["best_dev_f1"] >= 0.9  # the toy task is learnt


def test_evaluate_scores_untyped_entities(trained, iob_data, tmp_path):
    out = tmp_path / "dev.json"
    assert evaluate_job.main(["--model", str(trained), "--data", str(iob_data / "dev.txt"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["f1"] == json.loads((trained / "metrics.json").read_text())["best_dev_f1"]


def test_bulk_tagging_raw_text_gives_untyped_labels_and_entities(ray_cluster, trained, tmp_path):
    sentences = untyped(make_sentences(80, seed=13))
    src = tmp_path / "news_2024.jsonl"
    gold: dict[int, set[tuple[int, int]]] = {}
    with src.open("w") as fh:
        for i, (tokens, tags) in enumerate(sentences):
            text, words = join_words(tokens)
            gold[i] = {(words[s].start, words[e - 1].end) for _, s, e in entity_spans(tags)}
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
    out = tmp_path / "tagged"
    argv = ["--model", str(trained), "--input", str(src), "--output", str(out), "--output-format", "jsonl", "--actors", "1", "--cpus-per-actor", "0.5"]
    assert tag_job.main(argv) == 0
    rows = [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == list(range(80))
    found = hit = 0
    for row in rows:
        assert set(row["labels"]) <= {"O", "B", "I"}
        for ent in row["entities"]:
            assert ent["type"] == "" and row["text"][ent["start"] : ent["end"]] == ent["text"]
            found += 1
            hit += (ent["start"], ent["end"]) in gold[row["id"]]
    expected = sum(len(g) for g in gold.values())
    f1 = 2 * hit / (found + expected)
    assert f1 >= 0.9, f"raw-text entity F1 {f1:.3f}"


def test_a_head_of_another_size_is_one_line_before_training(ray_cluster, tiny_dirs, unnamed_decoder, tmp_path):
    """Typed CoNLL data has 9 labels; the saved head has 3 outputs: say so, train nothing."""
    write_conll(tmp_path / "typed.txt", make_sentences(20, seed=1))
    args = _train_args(tiny_dirs, unnamed_decoder, tmp_path, tmp_path / "out")
    args[1] = args[3] = str(tmp_path / "typed.txt")
    with pytest.raises(ConfigError, match=r"has 3 unnamed outputs \(LABEL_0\.\.LABEL_2\) but the training data has 9 labels"):
        train_job.main(args)
    assert not (tmp_path / "out" / "_ray").exists()


def test_the_same_rule_holds_for_an_encoder_only_tagger_saved_with_a_head(ray_cluster, unnamed_decoder, iob_data, tmp_path):
    """--arch encoder on a saved 3-way token classifier: its head takes the data's names, or a size error."""
    from ner_core.labels import LabelMismatchError
    from pipelines.labelled_data import read_labelled
    from pipelines.training.config import TrainConfig
    from pipelines.training.driver import _labels_for

    cfg = TrainConfig(arch="encoder", encoder=unnamed_decoder, train=str(iob_data / "train.txt"), output=str(tmp_path / "out"))
    assert _labels_for(cfg, read_labelled(cfg.train)).labels == ("O", "B", "I")
    write_conll(tmp_path / "typed.txt", make_sentences(20, seed=1))
    with pytest.raises(LabelMismatchError, match="3 unnamed outputs"):
        _labels_for(cfg, read_labelled(str(tmp_path / "typed.txt")))
