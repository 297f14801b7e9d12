"""jobs.tag never serves a stale model or mixes outputs made with different settings.

A retrained model uploaded to the same s3:// URI is the one used by the next run (the
per-node cache is keyed by the files' identity, not the URI), and an output records
everything that changes its labels, as used, so a resume with any of it changed is
refused with one line.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from jobs import tag as tag_job

SMALL = ["--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--stride", "6", "--rows-per-block", "40"]
TEXTS = ["Alice met Bob in Paris.", "The United Nations met in Geneva on Monday.", "Ms. Smith flew to Tokyo with Acme Corp staff."]


def _labels(model: str) -> list[str]:
    from ner_core.tagger import load_tagger

    return [label for _, label in sorted(load_tagger(model).config.id2label.items())]


def _tagged_labels(out: str, fs) -> set[str]:
    rows = [json.loads(line) for p in sorted(fs.glob(f"{out[5:]}/*.jsonl")) for line in fs.cat(p).decode().splitlines()]
    assert len(rows) == len(TEXTS)
    return {label for row in rows for label in row["labels"]}


@pytest.mark.slow
def test_a_retrained_model_uploaded_to_the_same_uri_is_used(ray_cluster, tiny_tagger, tiny_dirs, s3_bucket, tmp_path):
    from pipelines.storage import fsspec_filesystem

    fs = fsspec_filesystem(s3_bucket)
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    model = f"{s3_bucket}/models/ner"
    run = ["--model", model, "--input", str(source), "--output-format", "jsonl", "--max-length", "24", *SMALL]

    fs.put(tiny_tagger + "/", model[5:] + "/", recursive=True)  # CoNLL labels
    assert tag_job.main([*run, "--output", f"{s3_bucket}/first"]) == 0
    assert _tagged_labels(f"{s3_bucket}/first", fs) <= set(_labels(tiny_tagger))

    fs.rm(model[5:], recursive=True)  # "retrained": another model, labels O / B-ENT / I-ENT
    fs.put(tiny_dirs["bert_tagger"] + "/", model[5:] + "/", recursive=True)
    assert tag_job.main([*run, "--output", f"{s3_bucket}/second"]) == 0
    manifest = json.loads(fs.cat(f"{s3_bucket[5:]}/second/_manifest.json"))
    assert manifest["model_labels"] == _labels(tiny_dirs["bert_tagger"]) == ["O", "B-ENT", "I-ENT"]
    assert _tagged_labels(f"{s3_bucket}/second", fs) <= {"O", "B-ENT", "I-ENT"}


def _refusal(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tag_job.run_main(tag_job.main, argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err
    return err


@pytest.mark.slow
def test_resume_is_refused_when_anything_that_changes_labels_changed(ray_cluster, tiny_tagger, tiny_dirs, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_tagger, model)
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": TEXTS[0]}) + "\n")
    out = tmp_path / "out"
    base = ["--model", str(model), "--input", str(tmp_path / "in.jsonl"), "--output", str(out), *SMALL]

    # The tiny tagger has 128 positions: the run uses 128, and that is what is recorded.
    assert tag_job.main([*base, "--max-length", "512"]) == 0
    recorded = json.loads((out / "_job.json").read_text())
    assert recorded["max_length"] == 128 and recorded["precision"] == "fp32" and len(recorded["model_identity"]) == 16
    assert tag_job.main([*base, "--max-length", "1000"]) == 0  # also 128 in use: the same output

    err = _refusal(capsys, [*base, "--max-length", "64"])
    assert "made with max_length=128 (now 64)" in err
    err = _refusal(capsys, [*base, "--max-length", "512", "--mixed-precision", "bf16"])
    assert "made with precision='fp32' (now 'bf16')" in err

    shutil.rmtree(model)  # retrained in place: same path, other weights
    shutil.copytree(tiny_dirs["bert_tagger"], model)
    err = _refusal(capsys, [*base, "--max-length", "512"])
    assert f"made with another version of model {model}" in err and err.startswith("error: ")
    assert os.listdir(out / "_done")  # nothing was discarded by the refusals


def test_a_training_runs_checkpoints_beside_the_model_are_not_part_of_it(tiny_tagger, s3_bucket, tmp_path):
    """A training output folder holds the model at its top level and the run's checkpoints
    and logs in subfolders: those are neither hashed nor copied to the workers."""
    from pipelines.storage import fsspec_filesystem
    from pipelines.tagging.model import local_model_dir, model_identity

    folder = tmp_path / "run"
    shutil.copytree(tiny_tagger, folder)
    before = model_identity(str(folder))
    (folder / "_ray" / "train" / "checkpoint_000001").mkdir(parents=True)
    (folder / "_ray" / "train" / "checkpoint_000001" / "model.safetensors").write_bytes(os.urandom(1000))
    (folder / "tensorboard").mkdir()
    (folder / "tensorboard" / "events.out").write_bytes(b"step 1")
    assert model_identity(str(folder)) == before  # training state changed, the model did not
    (folder / "config.json").write_text((folder / "config.json").read_text().replace("}", ', "note": "retrained"}', 1))
    assert model_identity(str(folder)) != before

    fs = fsspec_filesystem(s3_bucket)
    uri = f"{s3_bucket}/runs/conll"
    fs.put(str(folder) + "/", uri[5:] + "/", recursive=True)
    copy = local_model_dir(uri, model_identity(uri))
    assert sorted(os.listdir(copy)) == sorted(p.name for p in folder.iterdir() if p.is_file())
