"""The packaged MiniLM with the case-marker tokens added, saved as a plain encoder folder.

    .venv/bin/python benchmarks/minilm_with_case_markers.py runs/minilm-case-markers

Why: an encoder-decoder's encoder and decoder must share one vocabulary. To start the
encoder from a tagger trained with case markers (its vocabulary has the two marker tokens)
and the decoder from MiniLM, the decoder needs the same two tokens: this adds them to
MiniLM's tokenizer and embeddings (new rows drawn around the old rows' mean, HF's
``resize_token_embeddings``) and saves both, safetensors. Used for the WNUT-2017 run
in docs/BENCHMARKS.md (issue 8).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(out: str) -> None:
    from transformers import AutoModel

    from ner_core.tagger import load_tokenizer, resolve_model_path

    path = resolve_model_path("minilm")
    tokenizer = load_tokenizer(path, case_markers=True)
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    print(f"{out}: vocabulary {len(tokenizer)} tokens")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/minilm-case-markers")
