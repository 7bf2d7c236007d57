# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters behind the validation reports (roles/model_validate/templates/report.*.j2, fleet.*.j2).

They turn onnx_validate's JSON (and a build record's accuracy search, and a rollout's per-host list)
into table rows with the numbers already formatted, and into inline SVG charts: pure Python string
building, no plotting library, nothing fetched. Every filter tolerates what a report may lack (no
reference model, no samples, no search) and says so instead of failing.

Colours (kept few, and tested in the rendered page): the FP32 reference is slate, the variant under
test blue, a passed gate green, a failed one red, the quantized share amber.
"""
from __future__ import annotations

import html
import math
import re

COLORS = {
    "reference": "#64748b",
    "model": "#2563eb",
    "pass": "#15803d",
    "fail": "#b91c1c",
    "share": "#d97706",
    "grid": "#e2e8f0",
    "axis": "#94a3b8",
    "text": "#1e293b",
    "muted": "#64748b",
}
FONT = "system-ui, -apple-system, 'Segoe UI', 'DejaVu Sans', Arial, sans-serif"
WIDTH = 720
MIB = 1048576.0

# gate -> (metric in onnx_validate's metrics, comparison, how to show its values); the gate names and
# comparisons are those of module_utils/sarai_onnx/validate.GATES (a unit test keeps them equal).
GATES = {
    "cosine_min": ("cosine", ">=", "cosine"),
    "mse_max": ("mse", "<=", "error"),
    "mae_max": ("mae", "<=", "error"),
    "speedup_min": ("speedup_ci95_low", ">=", "speedup"),  # the low end of the speedup's 95% interval
    "p50_max_ms": ("p50_ms", "<=", "ms"),
    "p99_max_ms": ("p99_ms", "<=", "ms"),
    "rss_max_mb": ("peak_rss_mb", "<=", "mib"),
}
# Task-level agreement gates of one output (module_utils/sarai_onnx/verdict.AGREEMENT).
AGREEMENT_GATES = {"threshold": ("threshold agreement", ">=", "share"),
                   "argmax": ("argmax agreement", ">=", "share")}

# The comparison table: (label, metric, how to show its values). Lower is better for all of them.
COMPARED = (
    ("load", "load_s", "s"),
    ("first inference", "first_inference_s", "s"),
    ("P50 latency", "p50_ms", "ms"),
    ("P90 latency", "p90_ms", "ms"),
    ("P99 latency", "p99_ms", "ms"),
    ("mean latency", "mean_ms", "ms"),
    ("peak RSS", "peak_rss_mb", "mib"),
    ("size on disk", "size_bytes", "bytes"),
)


# ------------------------------------------------------------------ numbers

def _is_num(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _short(value):
    """A number with as many digits as a chart label needs (3 significant, no exponent above 1)."""
    if not _is_num(value):
        return "n/a"
    a = abs(value)
    if a >= 1000:
        return f"{value:,.0f}"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 10:
        return f"{value:.1f}"
    if a >= 1:
        return f"{value:.2f}"
    return "0" if a == 0 else f"{value:.3g}"


def _show(value, how):
    """A metric as the tables show it, with its unit."""
    if not _is_num(value):
        return "n/a"
    if how == "cosine":
        return f"{value:.6f}"
    if how == "error":
        return f"{value:.3g}"
    if how == "speedup":
        return f"{value:.2f}x"
    if how == "share":
        return f"{value * 100:.2f}%"
    if how == "s":
        return f"{value:.3f} s"
    if how == "ms":
        return f"{value:.2f} ms"
    if how == "mib":
        return f"{value:.1f} MiB"
    if how == "bytes":
        return f"{value / MIB:.1f} MiB"
    return _short(value)


def _change(new, old):
    if not (_is_num(new) and _is_num(old)) or old == 0:
        return ""
    return f"{(new - old) / old * 100:+.0f}%".replace("-", "\u2212")


def _percentile(values, p):
    """Linear interpolation between closest ranks: numpy's default, as onnx_validate's metrics."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _nice_step(raw):
    exp = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw / exp <= m:
            return m * exp
    return 10 * exp


def _tick_format(ticks):
    """Format for tick labels: as many decimals as the step needs (0, 0.5, 1 -> one; 0, 10 -> none)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = 0
    while decimals < 6 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-9:
        decimals += 1
    return lambda v: f"{v:,.{decimals}f}"


def _ticks(low, high, count=5):
    """Round tick values covering [low, high] (low is usually 0: bars and latencies start at zero)."""
    if not high > low:
        high = low + 1.0
    step = _nice_step((high - low) / count)
    start = math.floor(low / step) * step
    ticks = [start]
    while ticks[-1] < high - 1e-12:
        ticks.append(ticks[-1] + step)
    return [round(t, 10) for t in ticks]


# ------------------------------------------------------------------ svg pieces

def _esc(text):
    return html.escape(str(text), quote=True)


def _text(x, y, text, size=12, anchor="start", color=None, weight="normal", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{color or COLORS["text"]}" font-weight="{weight}"{extra}>{_esc(text)}</text>')


def _line(x1, y1, x2, y2, color, width=1.0, extra=""):
    return (f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" '
            f'stroke-width="{width}"{extra}/>')


def _rect(x, y, w, h, color, extra=""):
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{max(h, 0):.1f}" fill="{color}"{extra}/>'


def _svg(height, title, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" width="100%" '
            f'role="img" aria-label="{_esc(title)}" font-family="{_esc(FONT)}" class="chart">'
            f'<title>{_esc(title)}</title>{"".join(body)}</svg>')


def _empty(title, message):
    return _svg(48, title, [_text(WIDTH / 2, 28, message, 13, "middle", COLORS["muted"])])


def _legend(x, y, entries):
    """Colour swatches with labels, left to right from (x, y)."""
    out = []
    for label, color in entries:
        out.append(_rect(x, y - 10, 12, 12, color, ' rx="2"'))
        out.append(_text(x + 17, y, label, 12))
        x += 30 + 7 * len(label)
    return out


def _x_axis(ticks, scale, y, left, right, title, unit):
    out = []
    fmt = _tick_format(ticks)
    for t in ticks:
        x = scale(t)
        out.append(_line(x, 12, x, y, COLORS["grid"]))
        out.append(_text(x, y + 16, fmt(t), 11, "middle", COLORS["muted"]))
    out.append(_line(left, y, right, y, COLORS["axis"]))
    out.append(_text((left + right) / 2, y + 34, f"{title} ({unit})", 12, "middle", COLORS["muted"]))
    return out


def _y_axis(ticks, scale, x_left, x_right, unit, side="left", fmt=None, color=None):
    out = []
    fmt = fmt or _tick_format(ticks)
    for t in ticks:
        y = scale(t)
        if side == "left":
            out.append(_line(x_left, y, x_right, y, COLORS["grid"]))
            out.append(_text(x_left - 6, y + 4, fmt(t), 11, "end", COLORS["muted"]))
        else:
            out.append(_text(x_right + 6, y + 4, fmt(t), 11, "start", COLORS["muted"]))
    x = x_left - 6 if side == "left" else x_right + 6
    out.append(_text(x, 10, unit, 11, "end" if side == "left" else "start", color or COLORS["muted"], "bold"))
    return out


def _metrics(result, key):
    value = (result or {}).get(key)
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------ tables

def report_rows(result):
    """Rows of the comparison table: {metric, reference, model, change} as display strings.

    Without a reference (the FP32 release validated on its own) the reference and change cells are
    empty strings: nothing is looked up on a missing reference.
    """
    m, r = _metrics(result, "metrics"), _metrics(result, "reference_metrics")
    rows = []
    for label, key, how in COMPARED:
        rows.append({"metric": label, "model": _show(m.get(key), how),
                     "reference": _show(r.get(key), how) if r else "",
                     "change": _change(m.get(key), r.get(key)) if r else ""})
    if r:
        rows.append({"metric": "speedup (reference P50 / P50)", "model": _show(m.get("speedup"), "speedup"),
                     "reference": "1.00x", "change": ""})
    return rows


def gate_rows(result):
    """Rows of the gate table: {gate, metric, rule, value, passed}, from onnx_validate's gate_results."""
    rows = []
    for g in (result or {}).get("gate_results") or []:
        name = str(g.get("gate", ""))
        output = g.get("output")
        if name in GATES or name in AGREEMENT_GATES:
            metric, op, how = GATES.get(name) or AGREEMENT_GATES[name]
            symbol = "\u2265" if op == ">=" else "\u2264"
            value = _show(g.get("value"), how)
            if g.get("reason"):
                value = f"{value} ({g['reason']})"
            if name == "speedup_min" and isinstance(g.get("interval"), list) and len(g["interval"]) == 2:
                value = f"{value} (95% interval {_show(g['interval'][0], how)}-{_show(g['interval'][1], how)})"
            rows.append({"gate": f"{name} [{output}]" if output is not None else name, "metric": metric,
                         "rule": f"{symbol} {_show(g.get('limit'), how)}", "value": value,
                         "passed": bool(g.get("passed"))})
        else:  # expected_output_shapes.<output>: shapes, not numbers
            rows.append({"gate": name, "metric": "output shape", "rule": f"= {g.get('limit')}",
                         "value": str(g.get("value")), "passed": bool(g.get("passed"))})
    return rows


def output_rows(result):
    """One row per output compared with the reference: {output, cosine, mse, mae, max_abs, nonfinite,
    size, gated} as display strings (gated: "ignored" for outputs listed in gates.ignore). [] without
    a reference."""
    per = _metrics(_metrics(result, "metrics"), "outputs")
    ignored = (_metrics(result, "gates").get("ignore") or []) if isinstance(result, dict) else []
    rows = []
    for name, m in per.items():
        m = m if isinstance(m, dict) else {}
        rows.append({"output": str(name), "cosine": _show(m.get("cosine"), "cosine"),
                     "mse": _show(m.get("mse"), "error"), "mae": _show(m.get("mae"), "error"),
                     "max_abs": _show(m.get("max_abs"), "error"),
                     "nonfinite": str(m.get("nonfinite_values")) if _is_num(m.get("nonfinite_values")) else "n/a",
                     "size": str(m.get("size")) if _is_num(m.get("size")) else "n/a",
                     "gated": "ignored" if name in ignored else "gated"})
    return rows


def speedup_interval(result):
    """The speedup's 95% interval as text ("1.92x-2.10x, 400 runs"), or "" without one."""
    m = _metrics(result, "metrics")
    ci = m.get("speedup_ci95")
    if not (isinstance(ci, list) and len(ci) == 2 and all(_is_num(v) for v in ci)):
        return ""
    runs = result.get("runs") if isinstance(result, dict) else None
    return f"{_show(ci[0], 'speedup')}-{_show(ci[1], 'speedup')}" + (f", {runs} timed runs each" if _is_num(runs) else "")


def search_rows(record):
    """The accuracy search of a build record as [{trial, change, excluded, cosine, mse, mae, share, passed}].

    `record` is the release's quantization.json (or the onnx_quantize result); its `search` lists the
    trials in the order tried, each with what changed, cosine/mse/mae against FP32, the quantized share
    of weight bytes (0-1) and the nodes kept in FP32 (a list, or their number). [] without a search.
    """
    trials = (record or {}).get("search") if isinstance(record, dict) else None
    rows = []
    for i, t in enumerate(trials or [], 1):
        if not isinstance(t, dict):
            continue
        excluded = t.get("excluded_nodes", t.get("nodes_excluded", t.get("excluded")))
        count = len(excluded) if isinstance(excluded, (list, tuple)) else excluded if _is_num(excluded) else 0
        share = t.get("byte_share", t.get("quantized_share", t.get("quantized_byte_share")))
        rows.append({"trial": i, "change": str(t.get("change", t.get("changed", ""))), "excluded": int(count),
                     "cosine": t.get("cosine") if _is_num(t.get("cosine")) else None,
                     "mse": t.get("mse") if _is_num(t.get("mse")) else None,
                     "mae": t.get("mae") if _is_num(t.get("mae")) else None,
                     "share": share if _is_num(share) else None,
                     "passed": t.get("passed") if isinstance(t.get("passed"), bool) else None})
    return rows


def fmt_metric(value, how="short"):
    """One number formatted as the tables do (how: cosine, error, speedup, s, ms, mib, bytes, short)."""
    return _show(value, how)


# ------------------------------------------------------------------ charts

def latency_svg(result, model_label="model", reference_label="reference"):
    """Every timed run of each model as a dot, over a box (quartiles, median) and min-max whiskers."""
    title = "Latency of each timed run"
    samples = (result or {}).get("latency_samples_ms") or {}
    series = [(label, [v for v in (samples.get(key) or []) if _is_num(v)], key)
              for label, key in ((reference_label, "reference"), (model_label, "model"))]
    series = [s for s in series if s[1]]
    if not series:
        return _empty(title, "This report has no per-run latency samples.")
    left, right, top, row_h = 120, WIDTH - 150, 14, 70
    axis_y = top + row_h * len(series) + 6
    ticks = _ticks(0, max(max(v) for _, v, _ in series) * 1.04)
    scale = lambda v: left + (right - left) * v / ticks[-1]  # noqa: E731
    body = _x_axis(ticks, scale, axis_y, left, right, "latency of one inference", "ms")
    for row, (label, values, kind) in enumerate(series):
        color = COLORS[kind]
        cy = top + row_h * row + row_h / 2
        q1, med, q3 = (_percentile(values, p) for p in (25, 50, 75))
        lo, hi = min(values), max(values)
        body.append(_text(left - 12, cy - 2, label, 14, "end", color, "bold"))
        body.append(_text(left - 12, cy + 15, f"{len(values)} runs", 11, "end", COLORS["muted"]))
        body.append(_line(scale(lo), cy, scale(q1), cy, color, 1.5))
        body.append(_line(scale(q3), cy, scale(hi), cy, color, 1.5))
        for x in (lo, hi):
            body.append(_line(scale(x), cy - 8, scale(x), cy + 8, color, 1.5))
        body.append(_rect(scale(q1), cy - 14, scale(q3) - scale(q1), 28, color,
                          f' fill-opacity="0.15" stroke="{color}" stroke-width="1.5" rx="3"'))
        for i, v in enumerate(values):
            jitter = ((i * 0.6180339887) % 1.0 - 0.5) * 40
            body.append(f'<circle cx="{scale(v):.1f}" cy="{cy + jitter:.1f}" r="2.6" fill="{color}" fill-opacity="0.55"/>')
        body.append(_line(scale(med), cy - 16, scale(med), cy + 16, color, 3.5))
        body.append(_text(right + 14, cy - 2, f"P50 {_short(med)} ms", 13, "start", color, "bold"))
        body.append(_text(right + 14, cy + 15, f"{_short(lo)}\u2013{_short(hi)} ms", 11, "start", COLORS["muted"]))
    return _svg(axis_y + 44, title, body)


def _grouped_bars(title, categories, series, unit, notes=None):
    """Vertical bars: one group per category, one bar per series [(label, kind, [value per category])]."""
    values = [v for _, _, vs in series for v in vs if _is_num(v)]
    if not values:
        return _empty(title, "No values to draw.")
    left, right, top, bottom = 64, WIDTH - 24, 36, 210
    ticks = _ticks(0, max(values) * 1.08)
    scale = lambda v: bottom - (bottom - top) * v / ticks[-1]  # noqa: E731
    body = _y_axis(ticks, scale, left, right, unit)
    body.append(_line(left, bottom, right, bottom, COLORS["axis"]))
    body += _legend(left + 8, 16, [(label, COLORS[kind]) for label, kind, _ in series])
    group_w = (right - left) / len(categories)
    bar_w = min(56, group_w * 0.7 / len(series))
    for c, category in enumerate(categories):
        x0 = left + group_w * c + (group_w - bar_w * len(series)) / 2
        for s, (_, kind, vs) in enumerate(series):
            v = vs[c]
            if not _is_num(v):
                continue
            x = x0 + bar_w * s
            body.append(_rect(x + 2, scale(v), bar_w - 4, bottom - scale(v), COLORS[kind], ' rx="2"'))
            body.append(_text(x + bar_w / 2, scale(v) - 5, _short(v), 11, "middle", COLORS["text"]))
        cx = left + group_w * (c + 0.5)
        body.append(_text(cx, bottom + 18, category, 13, "middle", COLORS["text"], "bold"))
        if notes and notes[c]:
            body.append(_text(cx, bottom + 34, notes[c], 12, "middle", COLORS["model"], "bold"))
    return _svg(bottom + 44, title, body)


def percentiles_svg(result, model_label="model", reference_label="reference"):
    """P50, P90 and P99 of the model beside the reference's, with the change under each group."""
    m, r = _metrics(result, "metrics"), _metrics(result, "reference_metrics")
    keys = ("p50_ms", "p90_ms", "p99_ms")
    series = [(model_label, "model", [m.get(k) for k in keys])]
    if r:
        series.insert(0, (reference_label, "reference", [r.get(k) for k in keys]))
    notes = [_change(m.get(k), r.get(k)) for k in keys] if r else None
    return _grouped_bars("Latency percentiles (ms)", ["P50", "P90", "P99"], series, "ms", notes)


def _hbar_panel(x0, width, title, unit, rows, note):
    """One panel of horizontal bars [(label, kind, value, part)], part = a lighter leading segment."""
    body = [_text(x0, 16, title, 13, "start", COLORS["text"], "bold")]
    if note:
        body.append(_text(x0 + width, 16, note, 13, "end", COLORS["model"], "bold"))
    values = [v for _, _, v, _ in rows if _is_num(v)]
    if not values:
        return body + [_text(x0, 44, "not measured", 12, "start", COLORS["muted"])]
    label_w, value_w = 56, 78
    top_v = max(values) or 1.0
    bar_x, bar_max = x0 + label_w, width - label_w - value_w
    for i, (label, kind, value, part) in enumerate(rows):
        y = 30 + i * 34
        body.append(_text(x0 + label_w - 8, y + 17, label, 12, "end", COLORS[kind], "bold"))
        if not _is_num(value):
            body.append(_text(bar_x, y + 17, "n/a", 12, "start", COLORS["muted"]))
            continue
        w = bar_max * value / top_v
        body.append(_rect(bar_x, y + 3, w, 22, COLORS[kind], ' rx="2"'))
        if _is_num(part) and 0 < part <= value:
            body.append(_rect(bar_x, y + 3, w * part / value, 22, "#ffffff", ' fill-opacity="0.45" rx="2"'))
        body.append(_text(bar_x + w + 6, y + 18, f"{_short(value)} {unit}", 12, "start", COLORS["text"]))
    return body


def resources_svg(result, model_label="model", reference_label="reference"):
    """Size on disk and peak RSS of the model beside the reference's (MiB), each with its change."""
    m, r = _metrics(result, "metrics"), _metrics(result, "reference_metrics")

    def mib(metrics, key):
        v = metrics.get(key)
        return v / MIB if _is_num(v) and key == "size_bytes" else v

    def rows(key, part_key=None):
        out = [(reference_label, "reference", mib(r, key), r.get(part_key) if part_key else None)] if r else []
        return out + [(model_label, "model", mib(m, key), m.get(part_key) if part_key else None)]

    half = (WIDTH - 40) / 2
    body = _hbar_panel(10, half - 10, "Size on disk", "MiB", rows("size_bytes"),
                       _change(m.get("size_bytes"), r.get("size_bytes")) if r else "")
    body += _hbar_panel(30 + half, half - 10, "Peak RSS of the process", "MiB", rows("peak_rss_mb", "baseline_rss_mb"),
                        _change(m.get("peak_rss_mb"), r.get("peak_rss_mb")) if r else "")
    height = 30 + 34 * (2 if r else 1) + 28
    body.append(_text(30 + half, height - 6, "lighter part: resident before the model was loaded", 11,
                      "start", COLORS["muted"]))
    return _svg(height, "Size on disk and peak RSS (MiB)", body)


def search_svg(record, cosine_min=None):
    """The accuracy search: cosine against FP32 (left axis) and the quantized share of weight bytes
    (right axis) per trial, by the number of nodes kept in FP32; the cosine gate as a dashed line."""
    rows = [r for r in search_rows(record) if r["cosine"] is not None]
    title = "Accuracy search: fidelity vs nodes kept in FP32"
    if not rows:
        return ""
    gate = cosine_min if _is_num(cosine_min) else None
    left, right, top, bottom = 64, WIDTH - 84, 40, 230
    low = min([r["cosine"] for r in rows] + ([gate] if gate is not None else []))
    c_ticks = _ticks(max(-1.0, low - (1.0 - low) * 0.15), 1.0, 4)
    if c_ticks[-1] > 1.0:
        c_ticks = [t for t in c_ticks if t <= 1.0] + [1.0]
    c_low, c_high = c_ticks[0], c_ticks[-1]
    y_cos = lambda v: bottom - (bottom - top) * (v - c_low) / (c_high - c_low)  # noqa: E731
    y_share = lambda v: bottom - (bottom - top) * v  # noqa: E731
    max_x = max(r["excluded"] for r in rows)
    x_ticks = _ticks(0, max(max_x, 1), min(max(max_x, 1), 8))
    x_of = lambda v: left + (right - left) * v / x_ticks[-1]  # noqa: E731

    body = _y_axis(c_ticks, y_cos, left, right, "cosine", color=COLORS["model"])
    body += _y_axis([0, 0.25, 0.5, 0.75, 1.0], y_share, left, right, "quantized", side="right",
                    fmt=lambda v: f"{v * 100:.0f}%", color=COLORS["share"])
    x_fmt = _tick_format(x_ticks)
    for t in x_ticks:
        body.append(_text(x_of(t), bottom + 16, x_fmt(t), 11, "middle", COLORS["muted"]))
    body.append(_line(left, bottom, right, bottom, COLORS["axis"]))
    body.append(_text((left + right) / 2, bottom + 34, "nodes kept in FP32 (excluded from quantization)", 12,
                      "middle", COLORS["muted"]))
    body += _legend(left + 8, 18, [("cosine vs FP32", COLORS["model"]), ("weight bytes quantized", COLORS["share"])])
    if gate is not None and c_low <= gate <= c_high:
        body.append(_line(left, y_cos(gate), right, y_cos(gate), COLORS["pass"], 1.5, ' stroke-dasharray="6 4"'))
        body.append(_text(left + 6, y_cos(gate) - 5, f"gate cosine \u2265 {gate:g}", 11, "start", COLORS["pass"], "bold"))
    shares = [r for r in rows if r["share"] is not None]
    if len(shares) > 1:
        points = " ".join(f"{x_of(r['excluded']):.1f},{y_share(r['share']):.1f}" for r in shares)
        body.append(f'<polyline points="{points}" fill="none" stroke="{COLORS["share"]}" stroke-width="1.5" '
                    'stroke-dasharray="4 3"/>')
    for r in shares:
        body.append(_rect(x_of(r["excluded"]) - 3.5, y_share(r["share"]) - 3.5, 7, 7, COLORS["share"]))
    points = " ".join(f"{x_of(r['excluded']):.1f},{y_cos(r['cosine']):.1f}" for r in rows)
    body.append(f'<polyline points="{points}" fill="none" stroke="{COLORS["model"]}" stroke-width="2"/>')
    for r in rows:
        passed = r["passed"] if r["passed"] is not None else (gate is None or r["cosine"] >= gate)
        x, y = x_of(r["excluded"]), y_cos(r["cosine"])
        body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{COLORS["pass" if passed else "fail"]}" '
                    'stroke="#ffffff" stroke-width="1.5"/>')
        body.append(_text(x + 7, y - 7, f"#{r['trial']}", 11, "start", COLORS["text"]))
    return _svg(bottom + 44, title, body)


def fleet_svg(hosts, model_label="new release", reference_label="FP32 reference"):
    """P50 of the new release beside the reference's on each validated host, speedup under each."""
    rows = [h for h in hosts or [] if isinstance(h, dict) and isinstance(h.get("validation"), dict)]
    if not rows:
        return _empty("P50 latency per host", "No host was validated in this rollout.")
    model = [_metrics(h["validation"], "metrics").get("p50_ms") for h in rows]
    reference = [_metrics(h["validation"], "reference_metrics").get("p50_ms") for h in rows]
    notes = [_show(_metrics(h["validation"], "metrics").get("speedup"), "speedup") if _is_num(
        _metrics(h["validation"], "metrics").get("speedup")) else "" for h in rows]
    series = [(model_label, "model", model)]
    if any(_is_num(v) for v in reference):
        series.insert(0, (reference_label, "reference", reference))
    return _grouped_bars("P50 latency per host (ms)", [str(h.get("host", "?")) for h in rows], series, "ms", notes)


# ------------------------------------------------------------------ the server's report, checked

# What the controller reads from onnx_validate's JSON (tasks/report.yml, the templates, these
# filters), by type. The server is not trusted: a report of another shape is refused before
# anything of it is written on the controller. Keys not listed here are not read.
_REPORT_FIELDS = {
    "created_utc": (str,), "host": (str,), "user": (str,), "model": (str,), "reference": (str, type(None)),
    "input_source": (str,), "msg": (str,), "passed": (bool,), "runs": (int,), "warmup": (int,), "seed": (int,),
    "metrics": (dict,), "reference_metrics": (dict, type(None)), "gates": (dict,), "gate_results": (list,),
    "failed_gates": (list,), "inputs": (dict,), "session_options": (dict,), "versions": (dict,),
    "latency_samples_ms": (dict,),
}
_OPTIONAL = {"user", "versions", "session_options", "latency_samples_ms", "input_source", "inputs", "gate_results"}
_NUMBER_METRICS = {metric for _, metric, _ in COMPARED} | {g[0] for g in GATES.values()} | {"max_abs", "size_ratio",
                                                                                             "baseline_rss_mb"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _type_name(kinds):
    names = {str: "a string", bool: "true or false", int: "a whole number", dict: "a mapping", list: "a list",
             type(None): "null"}
    return " or ".join(names[k] for k in kinds)


def _is(value, kinds):
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def report_problems(result):
    """Problems with the report JSON a server wrote ([] when the controller may use it): each names
    the field, its value and the type expected."""
    if not isinstance(result, dict):
        return [f"the report is {type(result).__name__}, not a JSON object"]
    problems = []

    def bad(field, value, expected):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        problems.append(f"{field} = {shown}: must be {expected}")

    for field, kinds in _REPORT_FIELDS.items():
        if field not in result:
            if field not in _OPTIONAL:
                problems.append(f"{field} is missing")
            continue
        value = result[field]
        if not _is(value, kinds):
            bad(field, value, _type_name(kinds))
        elif isinstance(value, int) and not isinstance(value, bool) and value < 0:
            bad(field, value, "a whole number >= 0")
        elif isinstance(value, str) and _CONTROL.search(value):
            bad(field, value, "a string without control characters")
    for field in ("metrics", "reference_metrics"):
        for key, value in (result.get(field) if isinstance(result.get(field), dict) else {}).items():
            if key in _NUMBER_METRICS and value is not None and not _is_num(value):
                bad(f"{field}.{key}", value, "a number or null")
    for field in ("gate_results", "failed_gates"):
        for index, item in enumerate(result.get(field) if isinstance(result.get(field), list) else []):
            if not isinstance(item, dict) or not isinstance(item.get("gate"), str):
                bad(f"{field}[{index}]", item, "a mapping with a gate name (a string)")
            elif field == "gate_results" and not isinstance(item.get("passed"), bool):
                bad(f"{field}[{index}].passed", item.get("passed"), "true or false")
    samples = result.get("latency_samples_ms") if isinstance(result.get("latency_samples_ms"), dict) else {}
    for key, values in samples.items():
        if values is not None and not (isinstance(values, list) and all(_is_num(v) for v in values)):
            bad(f"latency_samples_ms.{key}", values, "a list of numbers or null")
    return problems


class FilterModule:
    """sarai_report_rows, sarai_gate_rows, sarai_search_rows, sarai_fmt, the sarai_svg_* charts and
    sarai_report_problems."""

    def filters(self):
        return {
            "sarai_report_rows": report_rows,
            "sarai_gate_rows": gate_rows,
            "sarai_output_rows": output_rows,
            "sarai_speedup_interval": speedup_interval,
            "sarai_search_rows": search_rows,
            "sarai_fmt": fmt_metric,
            "sarai_svg_latency": latency_svg,
            "sarai_svg_percentiles": percentiles_svg,
            "sarai_svg_resources": resources_svg,
            "sarai_svg_search": search_svg,
            "sarai_svg_fleet": fleet_svg,
            "sarai_report_problems": report_problems,
        }
