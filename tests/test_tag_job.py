"""jobs.tag on the local Ray cluster: raw text and pre-split words, Parquet and JSONL, local and S3.

Every test reconciles rows (read == written + failed), checks that labels
line up with tokens and form valid IOB2, that entity offsets slice back to
the entity text, and that the labels equal ``Predictor`` run in-process on
the same words (so windows over long documents are merged correctly).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from jobs import tag as tag_job
from ner_core.inference import InferenceSettings
from ner_core.predictor import Predictor
from ner_core.labels import is_valid
from ner_core.sample_data import make_sentences, make_texts
from ner_core.tagger import load_tagger, load_tokenizer
from ner_core.text import split_words

SMALL = ["--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--max-length", "24", "--stride", "6", "--rows-per-block", "40"]
LONG_TEXT = " ".join(f"Alice{i} visited Paris with Bob." for i in range(60))  # ~300 words, far beyond 24 subwords


@pytest.fixture(scope="module")
def reference(tiny_tagger):
    """What the job's labels must equal: the same tagger and windows, run in this process."""
    tagger = Predictor(load_tagger(tiny_tagger), load_tokenizer(tiny_tagger), InferenceSettings(max_length=24, stride=6, batch_size=16))
    return lambda words: tagger.predict([words])[0]


def _read_output(out, fmt="parquet") -> list[dict]:
    if str(out).startswith("s3://"):
        from pipelines.storage import arrow_filesystem, strip_scheme

        dataset = pads.dataset(strip_scheme(str(out)), format=fmt if fmt == "parquet" else "json", filesystem=arrow_filesystem(str(out)))
    elif fmt == "parquet":
        dataset = pads.dataset(str(out), format="parquet")
    else:
        return [json.loads(line) for p in sorted(out.glob("*.jsonl")) for line in p.read_text().splitlines()]
    return dataset.to_table().to_pylist()


def _check_rows(rows: list[dict], reference, text_column: str | None = "text") -> None:
    for row in rows:
        assert len(row["labels"]) == len(row["tokens"]) == len(row["scores"]) and is_valid(row["labels"], "IOB2")
        assert row["labels"] == reference(row["tokens"])
        assert all(0.0 <= s <= 1.0 for s in row["scores"]) and all(0.0 <= e["score"] <= 1.0 for e in row["entities"])
        for ent in row["entities"]:
            if text_column:
                assert row[text_column][ent["start"] : ent["end"]] == ent["text"]
            else:
                assert " ".join(row["tokens"][ent["start"] : ent["end"]]) == ent["text"]
        if text_column:
            assert row["tokens"] == [w.text for w in split_words(row[text_column])]


def _write_jsonl(path, lines: list[str | bytes]) -> None:
    with open(path, "wb") as fh:
        for line in lines:
            fh.write((line if isinstance(line, bytes) else line.encode()) + b"\n")


@pytest.mark.slow
def test_raw_text_jsonl_tags_every_row_and_reports_bad_ones(ray_cluster, tiny_tagger, reference, tmp_path):
    texts = make_texts(60, seed=4) + [LONG_TEXT, "", "Café Zürich ☕ 東京 e\u0301te\u0301 zero\u200bwidth 👩‍👩‍👧"]
    good = [json.dumps({"id": i, "text": t, "meta": {"n": i}}, ensure_ascii=False) for i, t in enumerate(texts)]
    bad = [
        '{"id": 100, "text": "unterminated',  # malformed JSON
        '{"id": 101, "text": null}',
        '{"id": 102, "text": 42}',
        '{"id": 103, "body": "no text column"}',
        '["not", "an", "object"]',
        b'{"id": 105, "text": "bad \xff byte"}',
    ]
    src = tmp_path / "in"
    src.mkdir()
    _write_jsonl(src / "a.jsonl", good[:30] + bad[:3])
    _write_jsonl(src / "b.jsonl", good[30:] + [""] + bad[3:])  # a blank line is not a row
    out = tmp_path / "out"

    assert tag_job.main(["--model", tiny_tagger, "--input", str(src), "--output", str(out), "--id-column", "id", *SMALL]) == 0

    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["rows_read"] == len(good) + len(bad) == manifest["rows_written"] + manifest["rows_failed"]
    assert manifest["rows_failed"] == len(bad) and manifest["settings"]["format"] == "jsonl"
    run = manifest["this_run"]
    assert 0 < run["startup_s"] <= run["seconds"]  # until the first rows were tagged
    parts = run["startup_parts"]  # where the start-up went
    assert set(parts) == {"plan_s", "actor_s", "model_load_s", "first_rows_s"} and parts["model_load_s"] > 0
    assert sum(parts.values()) == pytest.approx(run["startup_s"], abs=0.05)
    rows = _read_output(out)
    assert sorted(r["id"] for r in rows) == list(range(len(texts)))
    by_id = {r["id"]: r for r in rows}
    assert by_id[5]["meta"] == {"n": 5} and by_id[5]["text"] == texts[5]  # input columns carried unchanged
    assert len(by_id[60]["tokens"]) == len(split_words(LONG_TEXT)) > 250  # the long document keeps every word
    assert by_id[61]["tokens"] == [] and by_id[61]["labels"] == []
    _check_rows(rows, reference)

    errors = [json.loads(line) for p in sorted((out / "_errors").glob("*.jsonl")) for line in p.read_text().splitlines()]
    reasons = {(os.path.basename(e["source"]), e["row"]): e["reason"] for e in errors}
    assert set(reasons) == {("a.jsonl", 30), ("a.jsonl", 31), ("a.jsonl", 32), ("b.jsonl", 34), ("b.jsonl", 35), ("b.jsonl", 36)}
    assert reasons[("a.jsonl", 30)].startswith("malformed JSON")
    assert reasons[("a.jsonl", 31)] == "'text' is null"
    assert reasons[("a.jsonl", 32)] == "'text' is int, expected a string"
    assert reasons[("b.jsonl", 34)].startswith("no column 'text'")
    assert reasons[("b.jsonl", 35)] == "a JSON list, expected an object"
    assert reasons[("b.jsonl", 36)].startswith("not valid UTF-8")
    raw = {e["row"]: e["raw"] for e in errors if e["source"].endswith("a.jsonl")}
    assert raw[30] == bad[0] and json.loads(raw[31]) == {"id": 101, "text": None}
    assert not list(out.glob("_staging/*"))  # everything committed


@pytest.mark.slow
def test_pre_split_parquet_to_jsonl_gives_token_offsets(ray_cluster, tiny_tagger, reference, tmp_path):
    sentences = make_sentences(50, seed=9)
    tokens = [words for words, _ in sentences] + [LONG_TEXT.split(), None, ["ok", None]]
    table = pa.table({"doc": [f"d{i}" for i in range(len(tokens))], "tokens": tokens, "score": [float(i) for i in range(len(tokens))]})
    pq.write_table(table, tmp_path / "words.parquet", row_group_size=16)
    out = tmp_path / "out"

    # windows made in Ray Data tasks beside the actor (the GPU default; the raw-text test above
    # makes them in the actor, the CPU default): both must give the reference labels
    argv = ["--model", tiny_tagger, "--input", str(tmp_path / "words.parquet"), "--output", str(out), "--tokens-column", "tokens", "--output-format", "jsonl", "--preprocess", "tasks", *SMALL]
    assert tag_job.main(argv) == 0

    rows = _read_output(out, "jsonl")
    assert len(rows) == len(tokens) - 2
    assert {r["doc"]: r["tokens"] for r in rows} == {f"d{i}": t for i, t in enumerate(tokens) if t is not None and None not in t}
    _check_rows(rows, reference, text_column=None)
    errors = [json.loads(line) for p in (out / "_errors").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert sorted((e["row"], e["reason"]) for e in errors) == [(51, "'tokens' is null"), (52, "'tokens'[1] is NoneType, expected a string")]


@pytest.mark.slow
def test_relative_paths_mean_the_folder_the_command_ran_in(ray_cluster, tiny_tagger, reference, tmp_path, monkeypatch):
    """``ray-ner tag --model runs/x --input docs.jsonl --output tagged`` from a user's own folder,
    while the Ray cluster's workers run in another one."""
    shutil.copytree(tiny_tagger, tmp_path / "runs" / "x")
    texts = make_texts(12, seed=4)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    monkeypatch.chdir(tmp_path)

    assert tag_job.main(["--model", "runs/x", "--input", "docs.jsonl", "--output", "tagged", "--output-format", "jsonl", *SMALL]) == 0

    rows = _read_output(tmp_path / "tagged", "jsonl")
    assert sorted(r["text"] for r in rows) == sorted(texts)
    _check_rows(rows, reference)


@pytest.mark.slow
def test_s3_in_s3_out(ray_cluster, tiny_tagger, reference, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    texts = make_texts(40, seed=5)
    for part in range(2):
        with fs.open(f"{s3_bucket[5:]}/corpus/part-{part}.jsonl", "wb") as fh:
            fh.write("".join(json.dumps({"text": t}) + "\n" for t in texts[part * 20 : (part + 1) * 20]).encode())

    out = f"{s3_bucket}/tagged"
    assert tag_job.main(["--model", tiny_tagger, "--input", f"{s3_bucket}/corpus/*.jsonl", "--output", out, *SMALL]) == 0

    manifest = json.loads(fs.cat(f"{s3_bucket[5:]}/tagged/_manifest.json"))
    assert manifest["rows_read"] == manifest["rows_written"] == 40 and manifest["rows_failed"] == 0
    rows = _read_output(out)
    assert sorted(r["text"] for r in rows) == sorted(texts)
    _check_rows(rows, reference)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_output(ray_cluster, tiny_tagger, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    texts = make_texts(750, seed=6)
    for part in range(5):
        _write_jsonl(src / f"part-{part}.jsonl", [json.dumps({"n": part * 150 + i, "text": t}) for i, t in enumerate(texts[part * 150 : (part + 1) * 150])])
    # one read task per file (small files would share one), so files finish one after another
    args = ["--model", tiny_tagger, "--input", str(src), *SMALL, "--rows-per-block", "10", "--rows-per-file", "30", "--commit-every-s", "0.2", "--read-tasks", "5"]

    whole = tmp_path / "whole"
    assert tag_job.main([*args, "--output", str(whole)]) == 0

    resumed = tmp_path / "resumed"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.tag", *args, "--output", str(resumed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # kill -9 the job the moment its first input file is committed, as a crash or a lost node would
    deadline = time.monotonic() + 300
    while not list((resumed / "_done").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    assert proc.wait(timeout=30) == -9, proc.stderr.read()[-2000:]  # killed part-way, not finished
    done_at_kill = _committed_files(resumed)  # a commit pass's marker lists every file it committed
    assert 1 <= done_at_kill < 5 and not (resumed / "_manifest.json").exists()
    # the scan of the fields' Parquet types ran beside the tagging, and was not recorded yet
    assert "jsonl_types" not in json.loads((resumed / "_job.json").read_text())

    assert tag_job.main([*args, "--output", str(resumed)]) == 0
    assert set(json.loads((resumed / "_job.json").read_text())["jsonl_types"]) == {"n", "text"}  # scanned again

    manifest = json.loads((resumed / "_manifest.json").read_text())
    assert manifest["rows_read"] == manifest["rows_written"] == 750
    assert manifest["this_run"]["files_tagged"] <= 5 - done_at_kill  # finished files were not redone
    key = lambda r: r["n"]  # noqa: E731
    assert sorted(_read_output(resumed), key=key) == sorted(_read_output(whole), key=key)  # no duplicates, none missing
    assert not [p for p in resumed.rglob("*") if p.name.startswith(".tmp-")]


def _committed_files(out) -> int:
    """Source files listed in the output's commit markers (each marker lists a commit pass's files)."""
    return sum(len(json.loads(p.read_text())["files"]) for p in (out / "_done").glob("*.json"))


@pytest.mark.slow
def test_many_small_files_killed_and_resumed_give_every_row_once(ray_cluster, tiny_tagger, reference, tmp_path):
    # A bucket of small files (0 to 3 rows each): they share read tasks and blocks, and are
    # committed many per pass, yet a kill -9 mid-run still loses nothing and repeats nothing.
    src = tmp_path / "in"
    src.mkdir()
    texts = iter(make_texts(450, seed=8))
    rows = 0
    for f in range(300):
        lines = [json.dumps({"n": rows + i, "text": next(texts)}) for i in range(f % 4)]
        _write_jsonl(src / f"doc-{f:03d}.jsonl", lines)
        rows += len(lines)
    out = tmp_path / "out"
    args = ["--model", tiny_tagger, "--input", str(src), "--output", str(out), "--output-format", "jsonl", *SMALL, "--rows-per-file", "20", "--commit-every-s", "0.2"]

    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-m", "jobs.tag", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((out / "_done").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    assert proc.wait(timeout=30) == -9, proc.stderr.read()[-2000:]
    done_at_kill = _committed_files(out)
    assert 1 <= done_at_kill < 300 and not (out / "_manifest.json").exists()

    assert tag_job.main(args) == 0
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["files"] == _committed_files(out) == 300 and manifest["files_failed"] == []
    assert manifest["rows_read"] == manifest["rows_written"] == rows and manifest["rows_failed"] == 0
    assert manifest["this_run"]["files_tagged"] <= 300 - done_at_kill  # committed files were not redone
    tagged = _read_output(out, "jsonl")
    assert sorted(r["n"] for r in tagged) == list(range(rows))  # every row once
    _check_rows(tagged, reference)  # the labels any run gives
    assert not (out / "_staging").exists() and not [p for p in out.rglob("*") if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_changed_settings_refuse_to_mix_into_existing_output(ray_cluster, tiny_tagger, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "Alice met Bob in Paris."}) + "\n")
    base = ["--model", tiny_tagger, "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), *SMALL]
    assert tag_job.main(base) == 0
    with pytest.raises(SystemExit) as exit_info:
        tag_job.run_main(tag_job.main, [*base, "--stride", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err  # (Ray's worker logs of the first run may precede it)
    assert "made with stride=6 (now 4)" in err.strip().splitlines()[-1] and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input", "nowhere/*.jsonl"], "no input files at nowhere/*.jsonl"),
        (["--model", "/no/such/model"], "cannot load model '/no/such/model'"),
        (["--actors", "3-1"], "--actors must be N or MIN-MAX"),
        (["--stride", "200"], "stride 200 is not shorter than the window (126 subwords of max_length 128)"),
    ],
)
@pytest.mark.slow
def test_unrunnable_jobs_exit_2_with_one_line(ray_cluster, tiny_tagger, tmp_path, capsys, argv, message):
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    base = {"--model": tiny_tagger, "--input": str(tmp_path / "in.jsonl"), "--output": str(tmp_path / "out")}
    flags = dict(zip(argv[::2], argv[1::2]))
    merged = [x for k, v in {**base, **flags}.items() for x in (k, v)]
    with pytest.raises(SystemExit) as exit_info:
        tag_job.run_main(tag_job.main, merged)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ") and message in err.strip().splitlines()[-1], err
    assert "Traceback" not in err


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate_weights", "model.safetensors is incomplete or damaged"),
        ("drop_weights", "no safetensors weights"),
        ("break_tokenizer", "tokenizer.json does not load"),
    ],
)
def test_a_damaged_model_copy_is_refused_before_tagging(ray_cluster, tiny_tagger, tmp_path, capsys, damage, message):
    # The driver reads the model's files without loading it (no torch there): a copy cut
    # short by a failed upload must still fail in one line, not in the actors' tracebacks.
    model = tmp_path / "model"
    shutil.copytree(tiny_tagger, model)
    weights = model / "model.safetensors"
    if damage == "truncate_weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "drop_weights":
        weights.unlink()
    else:
        (model / "tokenizer.json").write_text('{"version": ')
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "Alice met Bob in Paris."}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        tag_job.run_main(tag_job.main, ["--model", str(model), "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot load model '{model}'") and message in last, last
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_the_actor_batches_forward_passes_as_the_command_line_says(tiny_tagger):
    # --window-batch-size and --batch-tokens bound what the model sees in one forward pass
    from pipelines.tagging.actor import TagActor
    from pipelines.tagging.config import TagConfig, TagPlan
    from pipelines.tagging.reader import ERROR, RAW, ROW, SRC, jsonl_block
    from pipelines.tagging.model import check_model

    model = check_model(str(tiny_tagger))
    texts = [" ".join(["word"] * (1 + i % 40)) for i in range(300)]
    rows = [{"text": t, SRC: "a.jsonl", ROW: i, ERROR: None, RAW: None} for i, t in enumerate(texts)]

    def shapes(**settings) -> list[tuple[int, int]]:
        cfg = TagConfig(model=str(tiny_tagger), input="corpus/", output="tagged/", **settings)
        actor = TagActor(TagPlan.resolve(cfg, model, "jsonl"))
        seen = []
        actor.predictor.model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
        actor(jsonl_block(rows, "text", False))
        return seen

    default, small = shapes(), shapes(window_batch_size=32, batch_tokens=512)
    assert max(n for n, _ in default) == 64 and all(n * width <= 2048 for n, width in default)
    assert max(n for n, _ in small) == 32 and all(n * width <= 512 for n, width in small)
    assert sum(n for n, _ in small) == sum(n for n, _ in default) == 300  # every window once, whatever the cut


def test_the_actor_loads_and_runs_the_model_on_one_thread_whichever_thread_calls_it(tiny_tagger):
    # Ray Data calls an actor from another thread than the one that built it. Every thread that
    # runs torch's CPU kernels gets an OpenMP team of its own, and two teams on the actor's cores
    # made OpenMP sleep at its barriers instead of spinning: the model stays on one thread, with
    # the actor's --torch-threads.
    import threading

    import torch

    from pipelines.tagging.actor import TagActor
    from pipelines.tagging.config import TagConfig, TagPlan
    from pipelines.tagging.reader import ERROR, RAW, ROW, SRC, jsonl_block
    from pipelines.tagging.model import check_model

    model = check_model(str(tiny_tagger))
    cfg = TagConfig(model=str(tiny_tagger), input="corpus/", output="tagged/", torch_threads=1)
    actor = TagActor(TagPlan.resolve(cfg, model, "jsonl"))
    forward_passes = []
    actor.predictor.model.register_forward_pre_hook(lambda *_: forward_passes.append((threading.get_ident(), torch.get_num_threads())))
    rows = [{"text": text, SRC: "a_b.jsonl", ROW: i, ERROR: None, RAW: None} for i, text in enumerate(["Alice Smith flew to New York.", "AT&T won 2-1."])]

    tagged = []
    callers = [threading.Thread(target=lambda: tagged.append(actor(jsonl_block(rows, "text", False)))) for _ in range(2)]
    for caller in callers:
        caller.start()
        caller.join()

    assert tagged[0].column("labels").to_pylist() == tagged[1].column("labels").to_pylist()
    assert len(forward_passes) >= 2 and {threads for _, threads in forward_passes} == {1}
    assert len({thread for thread, _ in forward_passes}) == 1
    assert forward_passes[0][0] not in {threading.get_ident(), *(c.ident for c in callers)}


@pytest.mark.slow
def test_a_model_is_tagged_with_its_own_windows_and_temperature_and_scores_agree(ray_cluster, tiny_tagger, tmp_path):
    # a model trained with short windows (saved in inference.json) is tagged with them, and
    # jobs.tag writes exactly what the one predictor gives in-process: labels, entities, scores
    import shutil

    from ner_core.documents import document_from_tokens

    model = tmp_path / "model"
    shutil.copytree(tiny_tagger, model)
    (model / "inference.json").write_text(json.dumps({"max_length": 20, "stride": 5, "context_length": 0, "temperature": 1.6}))
    docs = [tokens for tokens, _ in make_sentences(40, seed=9)] + [[f"Word{i}" for i in range(45)]]
    src = tmp_path / "in"
    src.mkdir()
    _write_jsonl(src / "a_b.jsonl", [json.dumps({"id": i, "words": d}) for i, d in enumerate(docs)])
    out = tmp_path / "out"
    flags = ["--actors", "1", "--cpus-per-actor", "0.5", "--batch-size", "16", "--tokens-column", "words", "--output-format", "jsonl"]

    assert tag_job.main(["--model", str(model), "--input", str(src), "--output", str(out), "--min-score", "0.12", "--all-scores", "true", *flags]) == 0

    settings = json.loads((out / "_manifest.json").read_text())["settings"]
    assert (settings["max_length"], settings["stride"], settings["temperature"], settings["min_score"]) == (20, 5, 1.6, 0.12)
    rows = sorted(_read_output(out, "jsonl"), key=lambda r: r["id"])
    expected = Predictor.load(str(model), device="cpu").tag_documents([document_from_tokens({"w": d}, "w") for d in docs], min_score=0.12, all_scores=True)
    assert [r["labels"] for r in rows] == [e.labels for e in expected]
    for row, exp in zip(rows, expected):
        assert row["scores"] == pytest.approx(exp.scores, abs=1e-6)
        assert [(e["type"], e["start"], e["end"], e["text"]) for e in row["entities"]] == [(e["type"], e["start"], e["end"], e["text"]) for e in exp.entities]
        for ent in row["entities"]:  # an entity's score is its lowest word's, and none is under --min-score
            assert ent["score"] == pytest.approx(min(row["scores"][ent["start"] : ent["end"]]), abs=1e-6) and ent["score"] >= 0.12
        assert [sum(p) for p in row["all_scores"]] == pytest.approx([1.0] * len(row["tokens"]), abs=1e-4)
        inside = {i for e in row["entities"] for i in range(e["start"], e["end"])}
        assert all((label != "O") == (i in inside) for i, label in enumerate(row["labels"]))  # labels and entities agree
