"""Copies of CoNLL-2003 train/dev with ``-DOCSTART-`` lines put back, inferred from Reuters datelines.

Document context (``jobs.train --context-length``) reads a sentence's neighbours in
its own document, and this project's CoNLL-2003 train and dev files have no
document markers (``test.txt`` keeps its 230). ``ner_core.conll.infer_documents``
finds the boundaries again; this writes the copies outside the repository
(the corpus must not be redistributed) and prints how many documents it found.

    .venv/bin/python benchmarks/conll_documents.py ../shared/data/conll2003 runs/conll2003-docs
"""

from __future__ import annotations

import argparse
import os
import shutil

from ner_core.conll import format_documents, infer_documents, read_conll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="folder with train.txt, dev.txt, test.txt")
    ap.add_argument("out", help="folder to write the copies to")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for split in ("train", "dev", "test"):
        src = os.path.join(args.data, f"{split}.txt")
        sentences = read_conll(src)
        if any(s.document is not None for s in sentences):
            shutil.copyfile(src, os.path.join(args.out, f"{split}.txt"))  # real markers: kept as they are
            print(f"{split}: {len(sentences)} sentences, {sentences[-1].document + 1} documents (markers in the file, copied)")
            continue
        docs = infer_documents(sentences)
        with open(os.path.join(args.out, f"{split}.txt"), "w", encoding="utf-8") as fh:
            fh.write(format_documents(docs))
        print(f"{split}: {len(docs)} sentences, {docs[-1].document + 1} documents (inferred from datelines)")


if __name__ == "__main__":
    main()
