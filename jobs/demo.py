"""``python -m jobs.demo``: the whole loop on local Ray in a few minutes, with the packaged MiniLM.

1. writes a small labelled sample (generated, CoNLL format) and a raw-text corpus (JSONL);
2. fine-tunes the encoder-decoder tagger (MiniLM encoder + MiniLM decoder) on it with Ray Train;
3. evaluates the model on the dev sample (seqeval, entity level);
4. bulk-tags the corpus with ``jobs.tag``'s pipeline;

then prints what was trained (dev F1), what was tagged (rows, entities per type, a
few rows with their entities), where everything is, and the next commands to try.

Everything lands under ``--output`` (default ``outputs/demo``), replaced on each run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field

from jobs.cli import config_from_args, run_main
from pipelines.options import IO, MODEL, option


@dataclass
class DemoConfig:
    output: str = field(default="outputs/demo", metadata=option("folder for data, model and tagged output (replaced)", group=IO, essential=True))
    train_sentences: int = field(default=600, metadata=option("generated training sentences", group=IO, essential=True))
    dev_sentences: int = field(default=100, metadata=option("generated dev sentences", group=IO, essential=True))
    corpus_rows: int = field(default=2000, metadata=option("generated rows to tag", group=IO, essential=True))
    epochs: int = field(default=2, metadata=option("training epochs", group=MODEL, essential=True))
    arch: str = field(default="encoder-decoder", metadata=option("encoder-decoder | encoder", group=MODEL, essential=True))

def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(DemoConfig, argv, "Fine-tune, evaluate and bulk-tag on local Ray with the packaged MiniLM.")
    import pyarrow.dataset as pads

    from jobs.errors import explain
    from ner_core.metrics import format_report
    from ner_core.sample_data import make_sentences, make_texts, write_conll
    from pipelines.console.terminal import echo, format_duration, print_plan
    from pipelines.evaluation import EvaluateConfig, run_evaluation
    from pipelines.console.jobs import cluster_line, tensorboard_dir
    from pipelines.ray_env import init_ray
    from pipelines.tagging.driver import TagConfig, run_tagging
    from pipelines.training.config import TrainConfig
    from pipelines.training.driver import run_training

    started = time.monotonic()
    out = os.path.abspath(cfg.output)
    shutil.rmtree(out, ignore_errors=True)
    data = os.path.join(out, "data")
    os.makedirs(os.path.join(data, "corpus"))
    write_conll(os.path.join(data, "train.txt"), make_sentences(cfg.train_sentences, seed=1))
    write_conll(os.path.join(data, "dev.txt"), make_sentences(cfg.dev_sentences, seed=2))
    with open(os.path.join(data, "corpus", "docs.jsonl"), "w") as fh:
        for i, text in enumerate(make_texts(cfg.corpus_rows, seed=3)):
            fh.write(json.dumps({"id": i, "text": text}) + "\n")

    with explain():
        init_ray()
        print_plan(
            "ray-ner demo: fine-tune a tagger, evaluate it and bulk-tag a corpus, on Ray with the packaged MiniLM",
            [
                ("data", f"{cfg.train_sentences:,} train / {cfg.dev_sentences:,} dev sentences (generated, CoNLL) and a {cfg.corpus_rows:,}-row corpus (JSONL)"),
                ("model", f"{cfg.arch} tagger, MiniLM encoder{' + decoder' if cfg.arch == 'encoder-decoder' else ''}, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}"),
                ("resources", cluster_line()),
                ("output", out),
            ],
        )
        echo(f"\n[1/4] sample data written to {data}")
        echo("\n[2/4] fine-tuning with Ray Train")
        model = os.path.join(out, "model")
        train = TrainConfig(
            train=os.path.join(data, "train.txt"), dev=os.path.join(data, "dev.txt"), output=model,
            arch=cfg.arch, encoder="minilm", case_markers=True, epochs=cfg.epochs, batch_size=16, lr=1e-4,
            max_length=64,  # workers: --num-workers auto, one per node using its cores
        )  # fmt: skip
        summary = run_training(train)

        echo("\n[3/4] evaluating on the dev sample (entity level, strict IOB2)")
        metrics = run_evaluation(EvaluateConfig(model=model, data=os.path.join(data, "dev.txt"), report=os.path.join(out, "eval")))
        echo("\n".join("  " + line for line in format_report(metrics).splitlines()))

        echo("\n[4/4] bulk-tagging the corpus with Ray Data")
        tagged = os.path.join(out, "tagged")
        manifest = run_tagging(TagConfig(model=model, input=os.path.join(data, "corpus"), output=tagged, actors="1", cpus_per_actor=1, torch_threads=2))

    rows = pads.dataset(tagged, format="parquet").to_table().to_pylist()
    rows.sort(key=lambda r: r["id"])
    counts = Counter(e["type"] for r in rows for e in r["entities"])
    best = summary["best_dev_f1"]
    run = manifest["this_run"]
    lines = [
        "",
        f"Done in {format_duration(time.monotonic() - started)}.",
        f"  trained   {cfg.arch} tagger: best dev F1 {best:.3f} (epoch {summary['best_epoch'] + 1} of {len(summary['epochs'])}), "
        f"{summary['train_tokens_per_s']:,.0f} tokens/s, {format_duration(summary['wall_time_s'])}",
        f"  tagged    {manifest['rows_written']:,} rows, {manifest['rows_failed']:,} failed, of {manifest['rows_read']:,} read; "
        f"{run.get('words_per_s') or 0:,.0f} words/s",
        "  entities  " + (", ".join(f"{name} {n:,}" for name, n in sorted(counts.items())) or "none found"),
        "  examples",
    ]
    for r in rows[:4]:
        ents = ", ".join(f"{e['type']} {e['text']!r}" for e in r["entities"]) or "no entities"
        lines += [f"    {r['text']}", f"      -> {ents}"]
    tb = tensorboard_dir(model)
    lines += [
        "  where",
        f"    model        {model}",
        f"    report       {model}/report.html  (open in a browser: curves, per-type table, confusion matrix)",
        f"    evaluation   {out}/eval/report.html",
        f"    tagged       {tagged}  (Parquet; errors in _errors/, counts in _manifest.json)",
        f"    tensorboard  tensorboard --logdir {tb}",
        "  next",
        f"    ray-ner tag --model {model} --input {data}/corpus --output {out}/tagged-jsonl --output-format jsonl",
        f"    ray-ner evaluate --model {model} --data {data}/dev.txt --report {out}/eval",
        f"    ray-ner train --train {data}/train.txt --dev {data}/dev.txt --output {out}/model-encoder --arch encoder --case-markers true --epochs 3 --num-workers 1 --cpus-per-worker 1",
    ]
    echo("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_main(main)
