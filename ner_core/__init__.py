"""Pure NER logic: models, labels, alignment, metrics. No Ray imports here.

The model classes load on first use (``from ner_core import EncoderDecoderTagger``,
or importing ``ner_core.model``/``ner_core.tagger``), which also registers
``EncoderDecoderTagger`` with the transformers Auto classes. Lazily, because the
text, label and document modules are what Ray's read and write tasks import, and
torch plus transformers would add seconds and hundreds of MiB to each of those processes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EncoderDecoderTagger", "EncoderDecoderTaggerConfig", "TaggerConfigError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ner_core import model

        return getattr(model, name)
    raise AttributeError(f"module 'ner_core' has no attribute {name!r}")
