"""One self-contained HTML page per run: curves, the per-type table and the confusion matrix.

Why HTML with inline SVG: it opens from a laptop's file browser, a cluster's
shared disk or an S3 console download with no server, no notebook and no
plotting library (nothing to install next to Ray on a head node), and it can
be diffed and grepped. Every number on the page comes from the ``metrics.json``
summary (training) or the ``jobs.evaluate`` metrics it is given; nothing is
recomputed here.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence

# One colour per series, readable for the common colour-vision deficiencies (Okabe-Ito).
_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;margin:0;background:#f5f7fa}
main{max-width:1040px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:24px;margin:0 0 2px}h2{font-size:18px;margin:32px 0 10px}
.sub{color:#5b6775;margin:0 0 18px;font-size:13px;word-break:break-all}
.cards{display:flex;gap:12px;flex-wrap:wrap}
.card{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px}.card span{color:#5b6775;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.charts{display:flex;gap:16px;flex-wrap:wrap}
.chart{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:8px}
table{border-collapse:collapse;background:#fff;border:1px solid #dde3ea}
th,td{padding:5px 12px;text-align:right;border-bottom:1px solid #eef1f5;font-variant-numeric:tabular-nums}
th{background:#eef2f6;font-weight:600}td.name,th.name{text-align:left}
tr.total td{font-weight:600;border-top:2px solid #c9d2dc}
.bar{display:inline-block;height:9px;background:#0072B2;border-radius:2px;vertical-align:middle;margin-right:6px}
table.cm td{min-width:54px;text-align:center}table.cm th{text-align:center}table.cm th.name{text-align:left}td.zero{color:#b8c0ca}
.note{color:#5b6775;font-size:13px;max-width:820px}
details{margin-top:28px}summary{cursor:pointer;font-weight:600}
code{background:#eef2f6;padding:1px 4px;border-radius:3px}
"""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k apart) covering ``[lo, hi]``."""
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks = []
    t = first
    while t < hi + step * 0.999:
        ticks.append(round(t, 10))
        t += step
    return ticks


def line_chart(
    x: Sequence[int],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    y_range: tuple[float, float] | None = None,
    width: int = 470,
    height: int = 270,
) -> str:
    """An SVG line chart: one polyline per series, a dot per point with its value as a tooltip.

    With more than one series, a legend row sits between the title and the plot: inside the
    plot it lay on the top grid line and on any curve near it (a dev F1 of 0.9 and up)."""
    legend = len(series) > 1
    left, right, top, bottom = 52, 16, 48 if legend else 34, 40
    values = [v for vs in series.values() for v in vs if v is not None]
    if y_range is None:
        lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
        pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
        lo, hi = max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad
    else:
        lo, hi = y_range
    ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    x_lo, x_hi = (min(x), max(x)) if x else (0, 1)
    span_x = (x_hi - x_lo) or 1
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (plot_w / 2 if x_hi == x_lo else (v - x_lo) / span_x * plot_w)

    def py(v: float) -> float:
        return top + plot_h - (v - lo) / (hi - lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" font-family="system-ui,sans-serif" font-size="11">',
        f'<text class="title" x="{left}" y="18" font-size="13" font-weight="600" fill="#1d2733">{html.escape(title)}</text>',
    ]
    digits = 2 if ticks[-1] - ticks[0] >= 1 else 3 if ticks[1] - ticks[0] < 0.05 else 2
    for t in ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6eaef"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6775">{t:.{digits}f}</text>')
    step = max(1, math.ceil(len(x) / 12))
    for i, xv in enumerate(x):
        if i % step == 0 or i == len(x) - 1:
            out.append(f'<text x="{px(xv):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#5b6775">{xv}</text>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#5b6775">epoch</text>')
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#9aa5b1"/>')
    legend_x, legend_y = left, 37  # the title's baseline is at 18
    for k, (name, vs) in enumerate(series.items()):
        colour = _COLOURS[k % len(_COLOURS)]
        points = [(px(xv), py(v), xv, v) for xv, v in zip(x, vs) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b, _, _ in points)
            out.append(f'<polyline class="series" data-series="{html.escape(name)}" fill="none" stroke="{colour}" stroke-width="2.2" points="{path}"/>')
        for a, b, xv, v in points:
            out.append(
                f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.6" fill="{colour}" data-series="{html.escape(name)}" data-x="{xv}" data-y="{v:.6g}">'
                f"<title>{html.escape(name)}, epoch {xv}: {v:.4f}</title></circle>"
            )
        if legend:
            out.append(f'<rect class="legend" x="{legend_x}" y="{legend_y - 4}" width="10" height="3" fill="{colour}"/>')
            out.append(f'<text class="legend" x="{legend_x + 14}" y="{legend_y}" fill="#1d2733">{html.escape(name)}</text>')
            legend_x += 22 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def reliability_chart(calibration: dict, *, width: int = 330, height: int = 300) -> str:
    """An SVG reliability diagram: per score bin, the share of entities that are right (bars)
    against the diagonal of perfect calibration; bins with no entity are left empty."""
    left, right, top, bottom = 46, 14, 34, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    title = f"Entity scores: reliability (ECE {calibration['ece']:.3f})"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}" font-family="system-ui,sans-serif" font-size="11">',
        f'<text class="title" x="{left}" y="18" font-size="13" font-weight="600" fill="#1d2733">{html.escape(title)}</text>',
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = top + plot_h - t * plot_h
        x = left + t * plot_w
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6eaef"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#5b6775">{t:.2f}</text>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#5b6775">{t:.2f}</text>')
    for b in calibration["bins"]:
        if not b["count"]:
            continue
        x0, x1 = left + b["lo"] * plot_w, left + b["hi"] * plot_w
        h = b["accuracy"] * plot_h
        out.append(
            f'<rect class="bin" x="{x0 + 1:.1f}" y="{top + plot_h - h:.1f}" width="{x1 - x0 - 2:.1f}" height="{h:.1f}" fill="{_COLOURS[0]}" fill-opacity="0.75">'
            f"<title>scores {b['lo']:.1f}-{b['hi']:.1f}: {b['count']:,} entities, {b['accuracy']:.3f} right, mean score {b['confidence']:.3f}</title></rect>"
        )
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top}" stroke="#9aa5b1" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" fill="#5b6775">entity score</text>')
    out.append("</svg>")
    return "".join(out)


def thresholds_table(calibration: dict) -> str:
    """Precision, recall and kept share of entities when only those at or above a score are kept."""
    rows = ['<table class="thresholds"><tr><th class="name">--min-score</th><th>precision</th><th>recall</th><th>F1</th><th>entities kept</th></tr>']
    for r in calibration["thresholds"]:
        rows.append(
            f'<tr><td class="name">{r["threshold"]:.2f}</td><td>{_fmt(r["precision"])}</td><td>{_fmt(r["recall"])}</td>'
            f'<td>{_fmt(r["f1"])}</td><td>{r["kept"]:.1%}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def calibration_section(calibration: dict | None, where: str) -> list[str]:
    """The report's block on entity scores: the reliability diagram beside the thresholds table."""
    if not calibration:
        return []
    before = calibration.get("ece_before")
    note = (
        f'<p class="note">Temperature {calibration["temperature"]:.3f} (fitted on dev by jobs.train; 1 means none)'
        + (f"; ECE {before:.3f} without it" if before is not None else "")
        + f". An entity's score is the lowest of its words' label probabilities; {calibration['entities']:,} entities on {html.escape(where)}.</p>"
    )
    return [
        "<h2>Entity scores</h2>",
        f'<div class="charts"><div class="chart">{reliability_chart(calibration)}</div><div class="chart">{thresholds_table(calibration)}</div></div>',
        note,
    ]


def per_type_table(metrics: dict) -> str:
    """Precision/recall/F1/support per entity type, then the micro-averaged total."""
    rows = ['<table class="per-type"><tr><th class="name">type</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>']
    for name, m in sorted(metrics["per_type"].items()):
        bar = f'<span class="bar" style="width:{round(60 * m["f1"])}px"></span>'
        rows.append(
            f'<tr data-type="{html.escape(name)}"><td class="name">{html.escape(name)}</td><td>{_fmt(m["precision"])}</td>'
            f'<td>{_fmt(m["recall"])}</td><td>{bar}{_fmt(m["f1"])}</td><td>{m["support"]:,}</td></tr>'
        )
    rows.append(
        f'<tr class="total"><td class="name">all (micro)</td><td>{_fmt(metrics["precision"])}</td><td>{_fmt(metrics["recall"])}</td>'
        f'<td>{_fmt(metrics["f1"])}</td><td>{metrics["support"]:,}</td></tr></table>'
    )
    return "".join(rows)


def confusion_table(confusion: dict) -> str:
    """Gold types down, predicted types across; cells shaded by their share of the row."""
    labels = confusion["labels"]
    matrix = confusion["matrix"]
    none = len(labels) - 1
    head = "".join(f"<th>{html.escape(name if j < none else 'none (missed)')}</th>" for j, name in enumerate(labels))
    rows = [f'<table class="cm"><tr><th class="name">gold \\ predicted</th>{head}<th>total</th></tr>']
    for i, (name, row) in enumerate(zip(labels, matrix)):
        total = sum(row)
        cells = []
        for j, n in enumerate(row):
            if i == none and j == none:
                cells.append("<td>·</td>")
                continue
            share = n / total if total else 0.0
            good = i == j
            colour = f"rgba(0,114,178,{0.08 + 0.6 * share:.2f})" if good else f"rgba(213,94,0,{0.08 + 0.6 * share:.2f})"
            style = f' style="background:{colour}"' if n else ' class="zero"'
            cells.append(f'<td data-gold="{html.escape(name)}" data-pred="{html.escape(labels[j])}"{style}>{n:,}</td>')
        label = html.escape(name if i < none else "none (spurious)")
        rows.append(f'<tr><th class="name">{label}</th>{"".join(cells)}<td>{total:,}</td></tr>')
    rows.append("</table>")
    return "".join(rows)


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>' for k, v in items) + "</div>"


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
        f'<body><main><h1>{html.escape(title)}</h1><p class="sub">{html.escape(subtitle)}</p>{body}</main></body></html>\n'
    )


_CONFUSION_NOTE = (
    '<p class="note">Each gold entity is counted once, in the row of its type and the column of the type predicted over '
    "exactly its span; <i>none (missed)</i> means nothing was predicted over exactly that span (not found, or found with "
    "other boundaries). The last row counts predicted entities whose span is no gold entity's. The diagonal is the "
    "correctly found entities of each type.</p>"
)


def _settings(config: dict) -> str:
    rows = "".join(f'<tr><td class="name">{html.escape(str(k))}</td><td class="name"><code>{html.escape(str(v))}</code></td></tr>' for k, v in config.items())
    return f"<details><summary>All settings</summary><table>{rows}</table></details>"


def training_report(summary: dict, output: str = "") -> str:
    """The page for one training run, from the summary written to ``metrics.json``."""
    epochs = summary["epochs"]
    x = [e["epoch"] + 1 for e in epochs]
    best = next((e for e in epochs if e["epoch"] == summary["best_epoch"]), epochs[-1] if epochs else {})
    cfg = summary.get("config", {})
    cards = [
        ("best dev F1", _fmt(summary.get("best_dev_f1"))),
        ("selected epoch", f"{summary['best_epoch'] + 1} of {len(epochs)}"),
        ("train tokens/s", f"{summary.get('train_tokens_per_s', 0):,.0f}"),
        ("wall time", f"{summary.get('wall_time_s', 0):,.0f} s"),
    ]
    charts = [line_chart(x, {"train loss": [e["train_loss"] for e in epochs]}, title="Training loss (mean per batch)")]
    has_dev = any("dev_f1" in e for e in epochs)
    if has_dev:
        charts.append(
            line_chart(
                x,
                {"F1": [e.get("dev_f1") for e in epochs], "precision": [e.get("dev_precision") for e in epochs], "recall": [e.get("dev_recall") for e in epochs]},
                title="Dev entity precision / recall / F1",
                y_range=(0.0, 1.0),
            )
        )
    body = [_cards(cards), "<h2>Curves</h2>", '<div class="charts">' + "".join(f'<div class="chart">{c}</div>' for c in charts) + "</div>"]
    if has_dev and "dev_per_type" in best:
        selected = {
            "per_type": best["dev_per_type"],
            "precision": best["dev_precision"],
            "recall": best["dev_recall"],
            "f1": best["dev_f1"],
            "support": sum(m["support"] for m in best["dev_per_type"].values()),
        }
        body += [f"<h2>Per entity type, dev, epoch {best['epoch'] + 1} (selected)</h2>", per_type_table(selected)]
        if best.get("dev_confusion"):
            body += [f"<h2>Confusion of entity types, dev, epoch {best['epoch'] + 1}</h2>", confusion_table(best["dev_confusion"]), _CONFUSION_NOTE]
        body += calibration_section(summary.get("calibration"), "dev")
    else:
        body.append('<p class="note">No dev set: the epoch with the lowest training loss was kept.</p>')
    body.append(_settings(cfg))
    model = cfg.get("arch", "tagger")
    subtitle = f"{model} tagger, encoder {cfg.get('encoder', '?')}; train {cfg.get('train', '?')}; dev {cfg.get('dev') or 'none'}; output {output or cfg.get('output', '')}"
    return _page("ray-ner training report", subtitle, "".join(body))


def evaluation_report(metrics: dict) -> str:
    """The page for one ``jobs.evaluate`` run on a labelled set."""
    cards = [
        ("F1", _fmt(metrics["f1"])),
        ("precision", _fmt(metrics["precision"])),
        ("recall", _fmt(metrics["recall"])),
        ("entities", f"{metrics['support']:,}"),
        ("sentences", f"{metrics['num_sentences']:,}"),
        ("token accuracy", _fmt(metrics["token_accuracy"])),
    ]
    body = [_cards(cards), "<h2>Per entity type</h2>", per_type_table(metrics)]
    if metrics.get("confusion"):
        body += ["<h2>Confusion of entity types</h2>", confusion_table(metrics["confusion"]), _CONFUSION_NOTE]
    body += calibration_section(metrics.get("calibration"), str(metrics.get("data", "this data")))
    subtitle = f"model {metrics.get('model', '?')}; data {metrics.get('data', '?')}"
    return _page("ray-ner evaluation report", subtitle, "".join(body))


def write_report(directory: str, page: str, name: str = "report.html") -> str:
    """Write ``page`` to ``directory/name`` (local); returns the path."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def search_report(summary: dict, *, search: str = "", output: str = "") -> str:
    """The page for one ``ray-ner tune`` search: dev F1 per trial and epoch, and the trials' table."""
    trials = summary["trials"]
    epochs = max((len(t["dev_f1"]) for t in trials), default=0)
    x = list(range(1, epochs + 1))
    series = {t["trial"]: [*t["dev_f1"], *[None] * (epochs - len(t["dev_f1"]))] for t in trials}
    best = summary["best_trial"]
    cards = [
        ("best dev F1", _fmt(summary.get("best_dev_f1"))),
        ("best trial", best),
        ("trials", f"{len(trials)}"),
        ("wall time", f"{summary.get('wall_time_s', 0):,.0f} s"),
    ]
    chart = line_chart(x, series, title="Dev F1 per trial and epoch", y_range=(0.0, 1.0), width=640, height=320)
    names = list(trials[0]["settings"]) if trials else []
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    rows = [f'<table class="trials"><tr><th class="name">trial</th>{head}<th>best dev F1</th><th>epochs</th><th>status</th></tr>']
    for t in sorted(trials, key=lambda t: -(t["best_dev_f1"] or -1)):
        cells = "".join(f"<td>{html.escape(f'{v:.3g}' if isinstance(v, float) else str(v))}</td>" for v in t["settings"].values())
        mark = " (best)" if t["trial"] == best else ""
        rows.append(
            f'<tr data-trial="{html.escape(t["trial"])}"><td class="name">{html.escape(t["trial"] + mark)}</td>{cells}'
            f'<td>{_fmt(t["best_dev_f1"])}</td><td>{t["epochs"]}</td><td>{html.escape(t["status"])}</td></tr>'
        )
    rows.append("</table>")
    note = (
        '<p class="note">ASHA stopped the <i>stopped</i> trials early on their dev F1; the best <i>finished</i> trial\'s model '
        'is the output (its own training report: <a href="train_report.html">train_report.html</a>).</p>'
    )
    body = [_cards(cards), "<h2>Dev F1</h2>", f'<div class="charts"><div class="chart">{chart}</div></div>', "<h2>Trials</h2>", "".join(rows), note]
    return _page("ray-ner search report", f"search {search}; output {output}", "".join(body))
