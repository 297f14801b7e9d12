"""The report pages in a real browser: every plot drawn, nothing in the console, no legend on a title.

Headless Chromium (Debian's ``chromium``, which scripts/test.sh installs) opens each kind of
``report.html`` from a file:// URL, as a user does, and is driven over the DevTools protocol
(the ``websockets`` client that Ray Serve's uvicorn brings): the console and uncaught errors
are recorded from the start, each SVG's box is screenshotted and decoded here (a small PNG
reader, no imaging library), and the page itself measures its title and legend boxes.

The pages are built by ``ner_core.report`` from summaries of the shapes jobs.train and
jobs.evaluate write, with their numbers computed by the same functions (``evaluate_tags``,
``entity_calibration``) on synthetic predictions: a real training run costs a Ray cluster.
A new kind of report is one more entry in ``PAGES``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from ner_core.calibration import entity_calibration
from ner_core.decoding import Decoded
from ner_core.labels import entity_spans
from ner_core.metrics import evaluate_tags
from ner_core.report import evaluation_report, search_report, training_report, write_report
from ner_core.sample_data import make_sentences

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
# No network here: without these Chromium keeps retrying refused connections in the background.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--remote-debugging-port=0",
)  # fmt: skip
TYPES = ["LOC", "MISC", "ORG", "PER"]


# -- the pages, from summaries of the shapes the jobs write --------------------------------------


def _predict(gold: list[list[str]], rng: random.Random, miss: float, swap: float) -> tuple[list[list[str]], list[tuple]]:
    """Gold tags with some entities missed, given another type or made up; the predicted
    entities as (doc, type index, start, end, right)."""
    pred, entities = [], []
    for d, tags in enumerate(gold):
        out = ["O"] * len(tags)
        for etype, start, end in entity_spans(tags, "IOB2"):
            if rng.random() < miss:
                continue
            right = rng.random() >= swap
            etype = etype if right else rng.choice([t for t in TYPES if t != etype])
            out[start:end] = [f"B-{etype}"] + [f"I-{etype}"] * (end - start - 1)
            entities.append((d, TYPES.index(etype), start, end, right))
        if out[-2] == "O" and rng.random() < miss / 3:  # a spurious entity: the word before the full stop
            out[-2] = "B-MISC"
            entities.append((d, TYPES.index("MISC"), len(out) - 2, len(out) - 1, False))
        pred.append(out)
    return pred, entities


def _calibration(gold: list[list[str]], entities: list[tuple], rng: random.Random) -> dict:
    """``entity_calibration`` of the predicted entities, scored higher when right (as a tagger's are)."""
    scores = [min(0.999, max(0.3, rng.gauss(0.9 if right else 0.6, 0.1))) for *_, right in entities]
    column = lambda i: np.array([e[i] for e in entities], np.int64)  # noqa: E731
    n_words = sum(len(t) for t in gold)
    decoded = Decoded(
        word_offsets=np.cumsum([0] + [len(t) for t in gold]), label_ids=np.zeros(n_words, np.int64), scores=np.ones(n_words, np.float32),
        entity_doc=column(0), entity_type=column(1), entity_start=column(2), entity_end=column(3), entity_score=np.array(scores, np.float32),
    )  # fmt: skip
    return {"temperature": 1.18, **entity_calibration(gold, decoded, TYPES), "ece_before": 0.081}


def _training_summary(*, dev: bool, epochs: int = 4) -> dict:
    """metrics.json of a run: one record per epoch (getting better), then the run's totals."""
    rng = random.Random(3)
    gold = [tags for _, tags in make_sentences(80, seed=2)]
    history = []
    for epoch in range(epochs):
        record = {"epoch": epoch, "train_loss": 1.6 / (epoch + 1) + 0.05, "train_tokens": 41_000, "train_time_s": 20.5, "tokens_per_s": 2_000.0}
        if dev:
            pred, entities = _predict(gold, rng, miss=0.45 / (epoch + 1), swap=0.3 / (epoch + 1))
            m = evaluate_tags(gold, pred, scheme="IOB2", mode="strict")
            record |= {
                "dev_f1": m["f1"], "dev_precision": m["precision"], "dev_recall": m["recall"],
                "dev_per_type": m["per_type"], "dev_confusion": m["confusion"], "eval_time_s": 1.2, "eval_wait_s": 0.1,
            }  # fmt: skip
        record["score"] = record.get("dev_f1", -record["train_loss"])
        history.append(record)
    best = max(history, key=lambda h: h["score"])
    config = {"train": "data/train.txt", "dev": "data/dev.txt" if dev else None, "output": "runs/model", "arch": "encoder", "encoder": "bert-base-cased", "epochs": epochs, "lr": 3e-5}
    summary = {
        "best_epoch": best["epoch"], "best_dev_f1": best.get("dev_f1"), "epochs": history, "wall_time_s": 97.0,
        "train_tokens": 41_000 * epochs, "train_tokens_per_s": 2_000.0, "labels": ["O"] + [f"{p}-{t}" for t in TYPES for p in "BI"], "config": config,
    }  # fmt: skip
    if dev:
        summary["calibration"] = _calibration(gold, entities, rng)
    return summary


def _evaluation_metrics() -> dict:
    """What jobs.evaluate returns (and passes to the report) for a labelled set."""
    rng = random.Random(5)
    gold = [tags for _, tags in make_sentences(120, seed=4)]
    pred, entities = _predict(gold, rng, miss=0.1, swap=0.08)
    metrics = evaluate_tags(gold, pred, scheme="IOB2", mode="strict")
    metrics["calibration"] = _calibration(gold, entities, rng)
    metrics["model"], metrics["data"] = "runs/model", "data/test.txt"
    return metrics


def _search_summary() -> dict:
    """What ``ray-ner tune`` hands the page: four trials as Tune names them, one stopped by ASHA after an epoch."""
    f1 = {"a1b2c_00000": [0.71, 0.84, 0.88], "a1b2c_00001": [0.64, 0.79, 0.86], "a1b2c_00002": [0.52], "a1b2c_00003": [0.69, 0.83, 0.91]}
    trials = [
        {"trial": t, "settings": {"lr": 1e-4 * (i + 1), "seed": i % 3 + 1}, "best_dev_f1": max(v), "epochs": len(v),
         "status": "stopped" if len(v) == 1 else "finished", "dev_f1": v, "output": f"runs/search/_tune/trials/{t}", "error": ""}
        for i, (t, v) in enumerate(f1.items())
    ]  # fmt: skip
    return {"best_trial": "a1b2c_00003", "best_dev_f1": 0.91, "best_settings": trials[3]["settings"], "trials": trials, "wall_time_s": 812.0}


PAGES = {
    "training": lambda: training_report(_training_summary(dev=True), "runs/model"),
    "training without dev": lambda: training_report(_training_summary(dev=False), "runs/model"),
    "evaluation": lambda: evaluation_report(_evaluation_metrics()),
    "search": lambda: search_report(_search_summary(), search="lr loguniform(0.0001, 0.003), seed in {1, 2, 3}", output="runs/search"),
}
# how many plots each page draws, so that a page losing one fails here too
PLOTS = {"training": 3, "training without dev": 1, "evaluation": 1, "search": 1}


# -- Chromium over the DevTools protocol -----------------------------------------------------------


class Browser:
    """One headless Chromium; ``open`` loads a page in a new tab and records its console."""

    def __init__(self, profile: Path):
        self.profile, self.events, self.next_id = profile, [], 0
        self.stack = contextlib.ExitStack()

    def __enter__(self) -> "Browser":
        from websockets.sync.client import connect

        try:
            proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.stack.callback(_stop, proc)
            port_file = self.profile / "DevToolsActivePort"  # the port it chose, and the browser's path
            deadline = time.monotonic() + 20
            while not (port_file.exists() and len(port_file.read_text().split()) == 2):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{CHROMIUM} did not start its DevTools server (exit code {proc.poll()})")
                time.sleep(0.05)
            port, path = port_file.read_text().split()
            self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=10))
        except BaseException:
            self.stack.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stack.close()

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params} | ({"sessionId": session} if session else {})
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv(timeout=20))
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str, since: int) -> None:
        """Until ``method`` has come for ``session`` among the events from index ``since`` on."""
        while not any(e.get("method") == method and e.get("sessionId") == session for e in self.events[since:]):
            self.events.append(json.loads(self.ws.recv(timeout=20)))

    def open(self, url: str) -> str:
        """A new tab showing ``url``, loaded and its fonts ready; returns its session."""
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable", session)
        self.send("Emulation.setDeviceMetricsOverride", session, width=1100, height=900, deviceScaleFactor=1, mobile=False)
        since = len(self.events)  # not the load of the tab's about:blank
        navigated = self.send("Page.navigate", session, url=url)
        assert "errorText" not in navigated, f"{url}: {navigated['errorText']}"
        self.wait_for("Page.loadEventFired", session, since)
        assert self.evaluate(session, "document.fonts.ready.then(() => location.href)") == url
        return session

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", session, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def errors(self, session: str) -> list[str]:
        """Uncaught exceptions, console.error/assert and the browser's own error log (a failed load)."""
        out = []
        for e in (e for e in self.events if e.get("sessionId") == session):
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(f"uncaught: {p['exceptionDetails'].get('exception', {}).get('description') or p['exceptionDetails']['text']}")
            elif e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                out.append(f"console.{p['type']}: {' '.join(str(a.get('value', a.get('description'))) for a in p['args'])}")
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                out.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, session: str, clip: dict | None = None) -> bytes:
        params = {"format": "png", "captureBeyondViewport": True, "optimizeForSpeed": True} | ({"clip": clip | {"scale": 1}} if clip else {})
        return base64.b64decode(self.send("Page.captureScreenshot", session, **params)["data"])


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# Per SVG on the page: its box, its title's, legend entries' and plot's boxes (grid, axis and
# data marks), and the colours its data marks are drawn in (fill-opacity applied on the chart's white).
MEASURE = """(() => Array.from(document.querySelectorAll('svg')).map(svg => {
  const box = el => { const r = el.getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height}; };
  const all = selector => Array.from(svg.querySelectorAll(selector));
  const marks = all('polyline.series, circle, rect.bin').map(el => {
    const s = getComputedStyle(el);
    return {paint: el.tagName === 'polyline' ? s.stroke : s.fill, opacity: el.tagName === 'polyline' ? 1 : parseFloat(s.fillOpacity)};
  });
  return {label: svg.getAttribute('aria-label'), box: box(svg), title: box(svg.querySelector('text.title')),
          legend: all('.legend').map(box), plot: all('line, polyline, circle, rect.bin').map(box), marks: marks};
}))()"""


# -- reading the screenshots -----------------------------------------------------------------------


def read_png(data: bytes) -> np.ndarray:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) as a (height, width, 3) array."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, idat = 8, {}, []
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos : pos + 4]), data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        idat.append(body) if kind == b"IDAT" else chunks.setdefault(kind, body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
    assert depth == 8 and colour in (2, 6) and not interlace, f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}"
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    out = bytearray()
    up = [0] * stride  # the row above the first: zeros
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if kind == 0:
            row = list(line)
        elif kind == 2:
            row = [(v + u) & 255 for v, u in zip(line, up)]
        elif kind in (1, 3, 4):  # these depend on the pixel to the left: one byte at a time
            row = [0] * stride
            for i, v in enumerate(line):
                a, b, c = (row[i - bpp], up[i], up[i - bpp]) if i >= bpp else (0, up[i], 0)
                if kind == 1:
                    pred = a
                elif kind == 3:
                    pred = (a + b) >> 1
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                row[i] = (v + pred) & 255
        else:
            raise AssertionError(f"bad PNG filter {kind}")
        out += bytes(row)
        up = row
    return np.frombuffer(bytes(out), np.uint8).reshape(height, width, bpp)[:, :, :3]


def _rgb(css: str, opacity: float) -> np.ndarray:
    """A computed CSS colour (``rgb(r, g, b)``) painted at ``opacity`` on white."""
    r, g, b = (int(v) for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3])
    return np.round(np.array([r, g, b]) * opacity + 255 * (1 - opacity))


def _touch(a: dict, b: dict) -> bool:
    """Whether two boxes share a point inside both (a grid line, zero pixels high, counts)."""
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


# -- the test ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; scripts/test.sh installs it as root)")
    pytest.importorskip("websockets.sync.client", reason="the websockets client (installed with ray[serve]) drives Chromium")
    with Browser(tmp_path_factory.mktemp("chromium_profile")) as b:
        yield b


@pytest.mark.parametrize("kind", PAGES)
def test_every_plot_of_the_report_renders_without_console_errors(browser, kind, tmp_path):
    path = write_report(str(tmp_path), PAGES[kind]())
    session = browser.open(Path(path).as_uri())
    (tmp_path / "page.png").write_bytes(browser.screenshot(session))  # the whole page, to look at when this fails
    svgs = browser.evaluate(session, MEASURE)
    assert len(svgs) == PLOTS[kind], f"{len(svgs)} plots on the {kind} report"
    for i, svg in enumerate(svgs):
        box = svg["box"]
        assert box["w"] > 100 and box["h"] > 100, f"{svg['label']}: drawn {box['w']}x{box['h']} px"
        png = browser.screenshot(session, {"x": box["x"], "y": box["y"], "width": box["w"], "height": box["h"]})
        (tmp_path / f"plot{i}.png").write_bytes(png)
        pixels = read_png(png).reshape(-1, 3).astype(np.int32)
        colours, counts = np.unique(pixels, axis=0, return_counts=True)
        background = colours[counts.argmax()]
        inked = np.abs(pixels - background).sum(axis=1) > 30
        assert inked.mean() > 0.02, f"{svg['label']}: only {inked.mean():.1%} of its pixels differ from the background ({tmp_path / f'plot{i}.png'})"
        # every series and bin is painted: its colour is on the screen, not only in the markup
        assert svg["marks"], f"{svg['label']}: no data marks"
        for paint in {(m["paint"], m["opacity"]) for m in svg["marks"]}:
            near = np.abs(pixels - _rgb(*paint)).max(axis=1) <= 12
            assert near.sum() >= 20, f"{svg['label']}: {paint[0]} at opacity {paint[1]} is on {near.sum()} pixels ({tmp_path / f'plot{i}.png'})"
        # the legend is read apart from the title and the plot, and its entries apart from each other
        for j, entry in enumerate(svg["legend"]):
            for other, what in [(svg["title"], "the title"), *((p, "the plot") for p in svg["plot"]), *((e, "another entry") for e in svg["legend"][j + 1 :])]:
                assert not _touch(entry, other), f"{svg['label']}: the legend entry at {entry} overlaps {what} at {other} ({tmp_path / f'plot{i}.png'})"
    assert browser.errors(session) == []
