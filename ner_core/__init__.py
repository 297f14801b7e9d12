"""Pure NER logic: models, labels, alignment, metrics. No Ray imports here.

Importing this package registers ``EncoderDecoderTagger`` with the
transformers Auto classes.
"""

from ner_core.model import EncoderDecoderTagger, EncoderDecoderTaggerConfig, TaggerConfigError

__all__ = ["EncoderDecoderTagger", "EncoderDecoderTaggerConfig", "TaggerConfigError"]
