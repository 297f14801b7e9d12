"""The model on the driver and on the workers: which version, where its files are, that it loads.

A model is named by its path (local or s3://) and pinned by ``model_identity``, a
hash of its files worked out once on the driver: every actor loads that version
or fails, so a model retrained mid-run cannot mix two versions in one output.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache

from pipelines.tagging.config import TagRunError, exception_line


def model_identity(model: str) -> str:
    """A hash of the model's files (ETags on S3, contents locally): changes when the model is retrained.

    The files directly in the model's folder: a training run's checkpoints and logs in its
    subfolders are not the model, and hashing them would slow every job's start.
    """
    from ner_core.model_files import resolve_model_path
    from pipelines.storage import files_identity

    return files_identity(resolve_model_path(model))


@lru_cache(maxsize=4)
def local_model_dir(model: str, identity: str) -> str:
    """A local directory holding version ``identity`` (``model_identity``) of ``model``.

    s3:// models (the files directly in the folder) are copied once per node and version
    into a cache keyed by the URI *and* the files' identity: a retrained model uploaded to
    the same URI gets a new cache entry instead of the old copy being served forever. The copy is checked against ``identity``
    after the download, so a model replaced mid-run fails loudly instead of mixing versions.
    """
    from ner_core.model_files import resolve_model_path
    from pipelines.storage import folder_files, fsspec_filesystem, is_s3

    if not is_s3(model):
        return resolve_model_path(model)
    cache = os.path.join(os.path.expanduser("~/.cache/ray-ner/models"), f"{hashlib.sha1(model.encode()).hexdigest()[:16]}-{identity}")
    if not os.path.isdir(cache):
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.dirname(cache))
        # the model's own files only (model_identity): not a training run's checkpoints beside them
        files = sorted(folder_files(model))
        fsspec_filesystem(model).get(files, [os.path.join(tmp, f.rsplit("/", 1)[-1]) for f in files])
        if model_identity(model) != identity:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"model {model} changed while this job was running; run the job again")
        try:
            os.rename(tmp, cache)
        except OSError:  # another process on this node finished first
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


@lru_cache(maxsize=4)
def cached_tokenizer(model: str, identity: str):
    """The model's tokenizer, loaded once per process (preprocessing tasks reuse their worker)."""
    from ner_core.tagger import load_tokenizer

    return load_tokenizer(local_model_dir(model, identity))


def load_failure(model: str, exc: BaseException) -> TagRunError:
    """The one-line error for a model that cannot be read or loaded, on the driver or in an actor."""
    return TagRunError(f"cannot load model {model!r}: {exception_line(exc)}")


@dataclass(frozen=True)
class ModelInfo:
    identity: str
    model_type: str
    labels: list[str]
    max_positions: int | None  # the smallest position limit of the encoder and decoder
    special_tokens: int = 2  # positions its tokenizer's special tokens take in a window
    saved_settings: dict = field(default_factory=dict)  # inference settings saved with it (ner_core.predictor)


def check_model(model: str) -> ModelInfo:
    """Fail fast, on the driver, when the model is missing or incomplete (before any cluster work).

    Reads the model's files (``ner_core.model_files``) without loading it: the driver then
    imports neither torch nor transformers, and the actors, which load it anyway, start
    sooner. It catches what breaks a copied model: a missing or cut-short weights file
    (safetensors header against the file's size), an unreadable config or tokenizer. A
    model that passes and still will not load (weights of another architecture) stops the
    job at the first actor, whose traceback ends in ``TagRunError: cannot load model ...``.
    """
    from ner_core.model_files import read_saved_model
    from ner_core.predictor import saved_settings

    try:
        identity = model_identity(model)
        path = local_model_dir(model, identity)
        saved = read_saved_model(path)
    except Exception as exc:  # noqa: BLE001 - any loading failure means the same thing to the user
        raise load_failure(model, exc) from exc
    return ModelInfo(identity, saved.model_type, saved.labels, saved.max_positions, saved.special_tokens, saved_settings(path))
