"""What a job prints, and what it keeps off the console.

Every job prints three things: a few lines of plan (inputs, model, resources),
one live progress line per stage, and a summary (counts, rate, where the output
and the errors are). On a terminal the progress line is redrawn in place; in a
log (``ray job logs``, CI, ``| tee``) it is printed at most every
``LOG_EVERY_S`` seconds, plus once when the stage ends, so a log of an
overnight run stays readable.

Ray's own INFO logs, Ray Data's executor state dumps and every worker's output
(which Ray forwards to the driver's console by default) go to Ray's log files in
the session directory instead (``/tmp/ray/session_latest/logs``), unless the
job runs with ``--verbose``. Warnings still reach the console, except the few
below that tell a user nothing they can act on; Ray Data's error records about a
failed task (a traceback, retry advice) stay in its log file, as the job reports
the same failure in one line. Progress from Ray Train workers
reaches the console through ``pipelines.console.progress`` instead of forwarded prints.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence

LOG_EVERY_S = 10.0
# A rate (and the ETA from it) over less time than this says more about when the stage
# first heard of its work than about its speed: a stage told of 5 batches at once would
# show thousands a second.
MIN_RATE_S = 2.0

# Console messages that carry no action for the user of a job: Ray's notice that a
# local cluster uses its (secure) default, and Ray Data's notes about the progress
# bars this module replaces.
_NOISE = (
    "Token authentication is enabled for this Ray cluster",
    "Progress bars disabled",
    "Progress bars for operators disabled",
    "A new progress UI is available",
    "Progress will be logged because stdout",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in _NOISE)


class _DropRaisedErrors(logging.Filter):
    """Ray Data's and Ray Tune's ERROR records about a failed task or trial: the job reports the
    same failure as one line; the record (traceback, retry advice) stays in Ray's log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


_state = {"verbose": False}


def set_verbose(verbose: bool) -> None:
    """``--verbose``: show Ray's own logs and forwarded worker output as well."""
    _state["verbose"] = bool(verbose)


def verbose() -> bool:
    return _state["verbose"]


def quiet_ray_logs() -> None:
    """Keep Ray's INFO logs and Ray Data's executor output off the console (not out of the log files).

    Called before ``ray.init``: the token notice is logged during it. Idempotent.
    """
    if verbose():
        return
    import ray  # noqa: F401 - configures the "ray" logger's console handler
    import ray.data  # configures the "ray.data" logger: a log-file handler and a console handler

    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, _DropNoise) for f in handler.filters):
                handler.addFilter(_DropNoise())
            # the file handlers keep everything; only what reaches the console is raised to WARNING
            if handler.get_name() == "console" or isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                if name in ("ray.data", "ray.tune") and not any(isinstance(f, _DropRaisedErrors) for f in handler.filters):
                    handler.addFilter(_DropRaisedErrors())
    # Ray Tune's newer console output prints its experiment box even at verbose=0; the older
    # engine honours it (read when a search starts; ray-ner tune prints its own plan and lines)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # The model loaders' own progress bars ("Loading weights") on the driver; their warnings stay.
    # huggingface_hub reads the variable when first imported, and transformers asks it then;
    # only a library already imported is switched off directly. (Importing transformers here
    # just for that would slow every driver's start.)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# --- printing ------------------------------------------------------------------------


def _is_tty(stream) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def format_duration(seconds: float | None) -> str:
    """``75`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(done: float, elapsed: float, unit: str) -> str | None:
    """``12.5 rows/s``; None until ``MIN_RATE_S`` have passed with something done."""
    if not done or elapsed < MIN_RATE_S:
        return None
    rate = done / elapsed
    digits = 0 if rate >= 10 else 1 if rate >= 1 else 2
    return f"{rate:,.{digits}f} {unit}/s"


def print_plan(title: str, items: Sequence[tuple[str, str]]) -> None:
    """``title`` then one aligned ``name  value`` line per item."""
    width = max((len(k) for k, _ in items), default=0)
    lines = [title] + [f"  {k:<{width}}  {v}" for k, v in items]
    echo("\n".join(lines))


print_summary = print_plan


class Stage:
    """One live progress line: ``name  done/total unit  rate  ETA``.

    ``update`` may be called from any thread, as often as it likes; the line is
    drawn at most every 0.2 s on a terminal and every ``LOG_EVERY_S`` in a log.
    ``finish`` draws the final state once and ends the line.
    """

    def __init__(self, name: str, total: float | None = None, unit: str | None = "rows", stream=None, log_every_s: float = LOG_EVERY_S):
        self.name, self.total, self.unit = name, total, unit
        self.stream = stream or sys.stdout
        self.tty = _is_tty(self.stream)
        self.log_every_s = log_every_s
        self.done = 0.0
        self.note = ""
        self.started = time.monotonic()
        self._drawn_at = 0.0 if self.tty else self.started  # in a log, the first line comes after log_every_s
        self._lock = threading.Lock()
        self._closed = False
        self._eta: float | None = None
        self._drawn_state: tuple = (0.0, "")

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self, final: bool = False, ended: str = "done") -> str:
        elapsed = time.monotonic() - self.started
        parts = []
        if self.unit:
            total = f"/{self.total:,.0f}" if self.total else ""
            parts.append(f"{self.done:,.0f}{total} {self.unit}")
            rate = format_rate(self.done, elapsed, self.unit)
            if rate:
                parts.append(rate)
        if self.note:
            parts.append(self.note)
        if final:
            parts.append(f"{ended} {'in' if ended == 'done' else 'after'} {format_duration(elapsed)}")
        else:
            eta = self._eta
            if eta is None and self.unit and self.total and self.done and self.rate() and elapsed >= MIN_RATE_S:
                eta = (self.total - self.done) / self.rate()
            parts.append(f"ETA {format_duration(eta)}" if eta is not None else f"{format_duration(elapsed)} elapsed")
        return f"{self.name}: " + "  ".join(parts)

    def _due(self, now: float) -> bool:
        """Redraw now? On a terminal 5 times a second. In a log, every ``log_every_s`` when the
        count moved, else once a minute (a heartbeat for a long wait, not a repeated line)."""
        if self.tty:
            return now - self._drawn_at >= 0.2
        state = (self.done, self.note)
        if now - self._drawn_at >= 60 or (state != self._drawn_state and now - self._drawn_at >= self.log_every_s):
            self._drawn_state = state
            return True
        return False

    def update(self, done: float | None = None, *, add: float = 0, total: float | None = None, note: str | None = None, eta_s: float | None = None) -> None:
        with self._lock:
            if self._closed:
                return
            if done is not None:
                self.done = done
            self.done += add
            if total is not None:
                self.total = total
            if note is not None:
                self.note = note
            self._eta = eta_s
            now = time.monotonic()
            if self._due(now):
                self._drawn_at = now
                _draw(self, self.line())

    def discard(self) -> None:
        """End without a final line (a placeholder the next stage replaces; on a terminal it draws over it)."""
        with self._lock:
            self._closed = True

    def finish(self, note: str | None = None, ended: str = "done") -> None:
        """Draw the final line: ``... done in 1:02`` (``ended="stopped"`` after a failure or Ctrl-C)."""
        with self._lock:
            if self._closed:
                return
            if note is not None:
                self.note = note
            self._closed = True
            _draw(self, self.line(final=True, ended=ended), end=True)


_live: dict = {"stage": None}  # the stage whose line is on screen now (terminal only)
_print_lock = threading.RLock()


def _draw(stage: Stage, text: str, end: bool = False) -> None:
    with _print_lock:
        if stage.tty:
            stage.stream.write("\r\x1b[K" + text + ("\n" if end else ""))
            _live["stage"] = None if end else stage
        else:
            stage.stream.write(text + "\n")
        stage.stream.flush()


def echo(text: str = "") -> None:
    """Print a line without tearing a live progress line (it is redrawn below)."""
    with _print_lock:
        live = _live["stage"]
        if live is not None:
            live.stream.write("\r\x1b[K")
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        if live is not None:
            live.stream.write(live.line())
            live.stream.flush()
