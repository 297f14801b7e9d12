"""Local paths and ``s3://`` URIs behind one interface.

S3 goes through s3fs (botocore underneath), so endpoint, region and
credentials come from the environment exactly as for the AWS CLI:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles. Nothing here
reads or logs a credential.
"""

from __future__ import annotations

import glob
import os
from functools import lru_cache

import fsspec
import pyarrow.fs as pafs


def is_s3(path: str) -> bool:
    return str(path).startswith(("s3://", "s3a://"))


@lru_cache(maxsize=None)
def _s3fs():
    import s3fs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs = {"endpoint_url": endpoint} if endpoint else {}
    return s3fs.S3FileSystem(client_kwargs=client_kwargs)


def fsspec_filesystem(path: str) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem for ``path`` (s3fs for ``s3://``, local otherwise)."""
    return _s3fs() if is_s3(path) else fsspec.filesystem("file")


def arrow_filesystem(path: str) -> pafs.FileSystem | None:
    """A pyarrow filesystem for Ray Data's readers/writers (None: let Ray infer local)."""
    if is_s3(path):
        return pafs.PyFileSystem(pafs.FSSpecHandler(_s3fs()))
    return None


def strip_scheme(path: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (what a PyFileSystem over s3fs expects)."""
    for prefix in ("s3://", "s3a://"):
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def expand_inputs(path: str, extensions: tuple[str, ...] = ()) -> list[str]:
    """A file, a folder (recursively, files with ``extensions``), or a glob -> sorted file list.

    Hidden and ``_``-prefixed names (``_SUCCESS``, ``_errors``) are skipped, as
    Spark and Ray Data do. Raises FileNotFoundError naming the path when
    nothing matches, so a typo fails in seconds, not after cluster start-up.
    """
    fs = fsspec_filesystem(path)
    scheme = "s3://" if is_s3(path) else ""
    bare = strip_scheme(path) if scheme else os.path.abspath(path)
    if glob.has_magic(bare):
        found = fs.glob(bare)
    elif fs.isdir(bare):
        found = [p for p in fs.find(bare) if not extensions or p.endswith(extensions)]
    elif fs.exists(bare):
        found = [bare]
    else:
        found = []
    found = [
        p for p in found
        if not any(part.startswith(("_", ".")) for part in p[len(bare):].split("/") if part)
        and not fs.isdir(p)
    ]
    if not found:
        raise FileNotFoundError(f"no input files at {path}")
    return sorted(scheme + p for p in found)
