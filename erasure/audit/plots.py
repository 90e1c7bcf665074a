"""Pictures of an audit report (PIL only, Pillow's bundled font):

* :func:`table_image` -- the report as a table; each metric cell is shaded from green (no damage) to red
  on the fixed scale of :data:`erasure.audit.report.METRICS`, and each concept carries its tag chip;
* :func:`bar_plot` -- one panel per metric side by side, one horizontal bar per concept, grouped and
  coloured by tag (target / CARE / unrelated); every bar grows with damage on the table's colour scale.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from ..grid import BACKGROUND, FONT_SIZE, GRID_LINE, PAD, TEXT, TITLE_SIZE, font, tag_colour, text_size
from .probes import TAGS
from .report import METRICS, AuditReport

GOOD = (120, 200, 120)
BAD = (225, 90, 80)
MISSING = (235, 235, 235)
CELL_W = 96  # px per metric column
PANEL_W = 160  # px of a full-length bar (the red end of the metric's scale)
GROUP_GAP = 8  # px between the tag groups of a bar plot
GRID_LINE_TEXT = (120, 120, 120)
PLOTTED = ("site_drift", "denoiser_drift", "ssim", "psnr", "care_loss")
"""Metrics a bar plot shows by default (the damage measures; raw CARE scores are in the table)."""


def shade(metric: str, value: float | None) -> tuple[int, int, int]:
    """Green at the metric's ``good`` value, red at ``bad``, linear in between (clamped)."""
    if value is None:
        return MISSING
    f = damage_fraction(metric, value)
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


def damage_fraction(metric: str, value: float) -> float:
    """Where ``value`` sits on the metric's colour scale: 0 at ``good`` (no damage), 1 at ``bad`` (clamped).

    The same position :func:`shade` colours, so a bar and its table cell agree; it also turns the
    metrics where more is better (SSIM, PSNR, CARE scores) into damage, so every bar grows with damage.
    """
    m = METRICS[metric]
    return min(1.0, max(0.0, (value - m.good) / (m.bad - m.good)))


def bar_plot(
    report: AuditReport, metrics: Sequence[str] | None = None, title: str = "damage by concept"
) -> Image.Image:
    """Small multiples: one panel per metric side by side, one horizontal bar per concept (rows grouped
    and coloured by tag, as in the table). A bar's length is :func:`damage_fraction` (empty = no damage,
    full = the red end of the metric's scale, named under the panel title); the measured value is written
    beside it. ``metrics`` defaults to the measured ones of :data:`PLOTTED`."""
    metrics = list(metrics) if metrics is not None else [m for m in report.metrics() if m in PLOTTED]
    if not metrics:
        raise ValueError("the report has no measured metric to plot")
    rows = _ordered(report)
    fnt, title_fnt = font(FONT_SIZE), font(TITLE_SIZE)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_h = text_size(probe, "Ag", fnt)[1]
    row_h = text_h + 2 * PAD
    chip_w = max(text_size(probe, t.upper(), fnt)[0] for t in TAGS) + 2 * PAD
    name_w = max(text_size(probe, r.concept, fnt)[0] for r in rows) + 2 * PAD
    value_w = text_size(probe, "-00.000", fnt)[0] + PAD
    title_h = text_size(probe, title, title_fnt)[1] + 2 * PAD
    head_h = 2 * row_h  # metric label, then the scale it is drawn on
    left = PAD + chip_w + PAD + name_w
    panel_w = max([PANEL_W] + [text_size(probe, METRICS[m].label, fnt)[0] + 2 * PAD for m in metrics])
    ys, y = [], title_h + head_h
    for i, r in enumerate(rows):
        if i and r.tag != rows[i - 1].tag:
            y += GROUP_GAP
        ys.append(y)
        y += row_h
    width = left + len(metrics) * (panel_w + value_w + PAD) + PAD
    height = y + PAD
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    draw.text((PAD, PAD), title, fill=TEXT, font=title_fnt)
    for yi, r in zip(ys, rows):
        draw.rectangle([PAD, yi + 2, PAD + chip_w, yi + row_h - 2], fill=tag_colour(r.tag))
        draw.text((2 * PAD, yi + PAD), r.tag.upper(), fill=BACKGROUND, font=fnt)
        draw.text((PAD + chip_w + PAD, yi + PAD), r.concept, fill=TEXT, font=fnt)
    for k, m in enumerate(metrics):
        x0 = left + k * (panel_w + value_w + PAD)
        spec = METRICS[m]
        draw.text((x0, title_h), spec.label, fill=TEXT, font=fnt)
        draw.text((x0, title_h + row_h - PAD), f"bar: {spec.good:g} .. {spec.bad:g}", fill=GRID_LINE_TEXT, font=fnt)
        draw.line([(x0, title_h + head_h - 2), (x0, height - PAD)], fill=TEXT)
        draw.line([(x0 + panel_w, title_h + head_h - 2), (x0 + panel_w, height - PAD)], fill=GRID_LINE)
        for yi, r in zip(ys, rows):
            v = r.value(m)
            if v is None:
                draw.text((x0 + PAD, yi + PAD), "-", fill=TEXT, font=fnt)
                continue
            length = round(panel_w * damage_fraction(m, v))
            if length:
                draw.rectangle([x0, yi + 3, x0 + length, yi + row_h - 3], fill=tag_colour(r.tag))
            draw.text((x0 + length + PAD, yi + PAD), f"{v:.3f}", fill=TEXT, font=fnt)
    return img
