"""Pictures of an audit report (PIL only, Pillow's bundled font):

* :func:`table_image` -- the report as a table; each metric cell is shaded from green (no damage) to red
  on the fixed scale of :data:`erasure.audit.report.METRICS`, and each concept carries its tag chip;
* :func:`bar_plot` -- one panel per metric, one bar per concept, grouped and coloured by tag
  (target / CARE / unrelated), with each tag's mean drawn as a black line across its group.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from ..grid import BACKGROUND, FONT_SIZE, GRID_LINE, PAD, TAG_COLOURS, TEXT, TITLE_SIZE, font, tag_colour, text_size
from .probes import TAGS
from .report import METRICS, AuditReport

GOOD = (120, 200, 120)
BAD = (225, 90, 80)
MISSING = (235, 235, 235)
CELL_W = 96  # px per metric column
PANEL_H = 150  # px of bar height range per panel
BAR_W = 18
BAR_GAP = 4
GROUP_GAP = 16
AXIS_W = 48
PLOTTED = ("site_drift", "denoiser_drift", "ssim", "psnr", "care_loss")
"""Metrics a bar plot shows by default (the damage measures; raw CARE scores are in the table)."""


def shade(metric: str, value: float | None) -> tuple[int, int, int]:
    """Green at the metric's ``good`` value, red at ``bad``, linear in between (clamped)."""
    if value is None:
        return MISSING
    m = METRICS[metric]
    f = (value - m.good) / (m.bad - m.good)
    f = min(1.0, max(0.0, f))
    return tuple(round(g + f * (b - g)) for g, b in zip(GOOD, BAD))  # type: ignore[return-value]


def _ordered(report: AuditReport) -> list:
    order = {t: i for i, t in enumerate(TAGS)}
    return sorted(report.rows, key=lambda r: order.get(r.tag, len(TAGS)))


def table_image(report: AuditReport, title: str = "collateral-damage audit") -> Image.Image:
    metrics = report.metrics()
    rows = _ordered(report)
    fnt, title_fnt = font(FONT_SIZE), font(TITLE_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = text_size(probe, "Ag", fnt)[1] + 2 * PAD
    chip_w = max(text_size(probe, t.upper(), fnt)[0] for t in TAGS) + 2 * PAD
    name_w = max([text_size(probe, r.concept, fnt)[0] for r in rows] + [text_size(probe, "concept", fnt)[0]]) + 2 * PAD
    cell_w = max([CELL_W] + [text_size(probe, METRICS[m].label, fnt)[0] + 2 * PAD for m in metrics])
    title_h = text_size(probe, title, title_fnt)[1] + 2 * PAD
    width = PAD + chip_w + PAD + name_w + cell_w * len(metrics) + PAD
    height = title_h + line_h * (len(rows) + 1) + PAD
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), title, fill=TEXT, font=title_fnt)
    x_metrics = PAD + chip_w + PAD + name_w
    y = title_h
    draw.text((PAD, y + PAD), "tag", fill=TEXT, font=fnt)
    draw.text((PAD + chip_w + PAD, y + PAD), "concept", fill=TEXT, font=fnt)
    for k, m in enumerate(metrics):
        draw.text((x_metrics + k * cell_w + PAD, y + PAD), METRICS[m].label, fill=TEXT, font=fnt)
    for i, r in enumerate(rows):
        y = title_h + line_h * (i + 1)
        draw.rectangle([PAD, y + 2, PAD + chip_w, y + line_h - 2], fill=tag_colour(r.tag))
        draw.text((2 * PAD, y + PAD), r.tag.upper(), fill=BACKGROUND, font=fnt)
        draw.text((PAD + chip_w + PAD, y + PAD), r.concept, fill=TEXT, font=fnt)
        for k, m in enumerate(metrics):
            v = r.value(m)
            x = x_metrics + k * cell_w
            draw.rectangle([x + 1, y + 1, x + cell_w - 1, y + line_h - 1], fill=shade(m, v))
            draw.text((x + PAD, y + PAD), "-" if v is None else f"{v:.3f}", fill=TEXT, font=fnt)
        draw.line([(PAD, y), (width - PAD, y)], fill=GRID_LINE)
    return img


def bar_plot(
    report: AuditReport, metrics: Sequence[str] | None = None, title: str = "damage by concept"
) -> Image.Image:
    """Bars per concept (module docstring); ``metrics`` defaults to the measured ones of :data:`PLOTTED`."""
    metrics = list(metrics) if metrics is not None else [m for m in report.metrics() if m in PLOTTED]
    if not metrics:
        raise ValueError("the report has no measured metric to plot")
    rows = _ordered(report)
    fnt, title_fnt = font(FONT_SIZE), font(TITLE_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = text_size(probe, "Ag", fnt)[1]
    label_h = max(text_size(probe, r.concept, fnt)[0] for r in rows) + PAD
    title_h = text_size(probe, title, title_fnt)[1] + 2 * PAD
    legend_h = text_h + 2 * PAD
    tags_present = [t for t in TAGS if any(r.tag == t for r in rows)]
    xs, x = [], AXIS_W + PAD
    for i, r in enumerate(rows):
        if i and r.tag != rows[i - 1].tag:
            x += GROUP_GAP
        xs.append(x)
        x += BAR_W + BAR_GAP
    width = max(x + PAD, AXIS_W + 200)
    panel_h = PANEL_H + text_h + 3 * PAD
    height = title_h + legend_h + panel_h * len(metrics) + label_h + PAD
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), title, fill=TEXT, font=title_fnt)
    lx = PAD
    for t in tags_present:
        draw.rectangle([lx, title_h + PAD, lx + text_h, title_h + PAD + text_h], fill=TAG_COLOURS[t])
        draw.text((lx + text_h + PAD, title_h + PAD), t, fill=TEXT, font=fnt)
        lx += text_h + 2 * PAD + text_size(draw, t, fnt)[0] + GROUP_GAP
    for p, m in enumerate(metrics):
        top = title_h + legend_h + p * panel_h
        base = top + text_h + 2 * PAD + PANEL_H
        values = [r.value(m) for r in rows]
        present = [abs(v) for v in values if v is not None]
        scale = max(present + [abs(METRICS[m].bad), abs(METRICS[m].good)]) or 1.0
        draw.text((PAD, top + PAD), f"{METRICS[m].label} (axis max {scale:.3g})", fill=TEXT, font=fnt)
        draw.line([(AXIS_W, base), (width - PAD, base)], fill=TEXT)
        draw.line([(AXIS_W, base), (AXIS_W, base - PANEL_H)], fill=GRID_LINE)
        for xi, r, v in zip(xs, rows, values):
            if v is None:
                continue
            h = round(PANEL_H * abs(v) / scale)
            y0, y1 = (base - h, base) if v >= 0 else (base, base + min(h, PAD))
            draw.rectangle([xi, y0, xi + BAR_W, y1], fill=tag_colour(r.tag))
        for t in tags_present:
            idx = [i for i, r in enumerate(rows) if r.tag == t and values[i] is not None]
            if idx:
                mean = sum(values[i] for i in idx) / len(idx)  # type: ignore[misc]
                ym = base - round(PANEL_H * max(mean, 0.0) / scale)
                draw.line([(xs[idx[0]] - 2, ym), (xs[idx[-1]] + BAR_W + 2, ym)], fill=TEXT, width=2)
    label_top = title_h + legend_h + panel_h * len(metrics)
    for xi, r in zip(xs, rows):
        tw, th = text_size(draw, r.concept, fnt)
        label = Image.new("RGB", (tw + 2, th + 4), BACKGROUND)
        ImageDraw.Draw(label).text((0, 0), r.concept, fill=TEXT, font=fnt)
        rotated = label.rotate(90, expand=True)
        img.paste(rotated, (xi + (BAR_W - rotated.width) // 2, label_top + PAD // 2))
    return img
