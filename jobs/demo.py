"""``python -m jobs.demo``: the whole loop on local Ray in a few minutes, with the packaged MiniLM.

1. writes a small labelled sample (generated, CoNLL format) and a raw-text corpus (JSONL);
2. fine-tunes the encoder-decoder tagger (MiniLM encoder + MiniLM decoder) on it with Ray Train;
3. evaluates the model on the dev sample (seqeval, entity level);
4. bulk-tags the corpus with ``jobs.tag``'s pipeline and prints a few tagged sentences.

Everything lands under ``--output`` (default ``outputs/demo``), replaced on each run.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

from jobs.cli import config_from_args, run_main


@dataclass
class DemoConfig:
    output: str = field(default="outputs/demo", metadata={"help": "folder for data, model and tagged output (replaced)"})
    train_sentences: int = 600
    dev_sentences: int = 100
    corpus_rows: int = 2000
    epochs: int = 2
    arch: str = field(default="encoder-decoder", metadata={"help": "encoder-decoder | encoder"})


def main(argv: list[str] | None = None) -> int:
    cfg = config_from_args(DemoConfig, argv, "Fine-tune, evaluate and bulk-tag on local Ray with the packaged MiniLM.")
    import pyarrow.dataset as pads

    from jobs.errors import explain
    from ner_core.metrics import format_report
    from ner_core.sample_data import make_sentences, make_texts, write_conll
    from pipelines.evaluation import EvaluateConfig, run_evaluation
    from pipelines.ray_env import init_ray
    from pipelines.tagging import TagConfig, run_tagging, summary_line
    from pipelines.training import TrainConfig, run_training

    out = os.path.abspath(cfg.output)
    shutil.rmtree(out, ignore_errors=True)
    data = os.path.join(out, "data")
    os.makedirs(os.path.join(data, "corpus"))
    write_conll(os.path.join(data, "train.txt"), make_sentences(cfg.train_sentences, seed=1))
    write_conll(os.path.join(data, "dev.txt"), make_sentences(cfg.dev_sentences, seed=2))
    with open(os.path.join(data, "corpus", "docs.jsonl"), "w") as fh:
        for i, text in enumerate(make_texts(cfg.corpus_rows, seed=3)):
            fh.write(json.dumps({"id": i, "text": text}) + "\n")
    print(f"[1/4] sample data in {data}")

    with explain():
        init_ray()
        model = os.path.join(out, "model")
        train = TrainConfig(
            train=os.path.join(data, "train.txt"), dev=os.path.join(data, "dev.txt"), output=model,
            arch=cfg.arch, encoder="minilm", case_markers=True, epochs=cfg.epochs, batch_size=16, lr=1e-4,
            max_length=64, num_workers=1, cpus_per_worker=1, torch_threads=2,
        )  # fmt: skip
        summary = run_training(train)
        print(f"[2/4] fine-tuned {cfg.arch} tagger -> {model} (best dev F1 {summary['best_dev_f1']:.3f}, {summary['wall_time_s']:.0f}s)")

        metrics = run_evaluation(EvaluateConfig(model=model, data=os.path.join(data, "dev.txt")))
        print("[3/4] evaluation on the dev sample:\n" + format_report(metrics))

        tagged = os.path.join(out, "tagged")
        manifest = run_tagging(TagConfig(model=model, input=os.path.join(data, "corpus"), output=tagged, actors="1", cpus_per_actor=1, torch_threads=2))
        print("[4/4] " + summary_line(manifest, tagged))

    rows = pads.dataset(tagged, format="parquet").to_table().to_pylist()
    rows.sort(key=lambda r: r["id"])
    counts = Counter(e["type"] for r in rows for e in r["entities"])
    print(f"\nentities found: {dict(sorted(counts.items()))}")
    print("a few tagged rows (text, then entities as type[start:end]='text'):")
    for r in rows[:5]:
        ents = ", ".join(f"{e['type']}[{e['start']}:{e['end']}]={e['text']!r}" for e in r["entities"]) or "none"
        print(f"  {r['text']}\n    -> {ents}")
    print(f"\noutput: {tagged} (Parquet: input columns + tokens, labels, entities); errors in {tagged}/_errors; counts in {tagged}/_manifest.json")
    return 0


if __name__ == "__main__":
    run_main(main)
