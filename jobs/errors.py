"""Turning expected failures into one-line reasons for the user.

A data error raised inside a Ray task reaches the driver wrapped in Ray's
exception types with a remote traceback; the user needs ``file:line: reason``.
"""

from __future__ import annotations

import contextlib

from jobs.cli import ConfigError


@contextlib.contextmanager
def explain():
    """Re-raise data errors and bad settings as ConfigError (printed as one line, exit 2)."""
    from pipelines.labelled_data import unwrap_data_error

    try:
        yield
    except ConfigError:
        raise
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as exc:
        data_error = unwrap_data_error(exc)
        raise ConfigError(str(data_error or exc)) from exc
    except Exception as exc:
        data_error = unwrap_data_error(exc)
        if data_error is None:
            raise
        raise ConfigError(str(data_error)) from exc
