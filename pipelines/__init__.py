"""Ray Data / Ray Train code. Pure NER logic lives in ``ner_core``."""
