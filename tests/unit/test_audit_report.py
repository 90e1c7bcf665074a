"""The audit report: JSON/CSV round trips, per-tag summaries, rank agreement, table image, bar plot."""

from __future__ import annotations

import csv
import io
import json

import pytest

from erasure.audit import AuditReport, AuditRow, bar_plot, table_image
from erasure.audit.plots import BAD, GOOD, shade
from erasure.grid import TAG_COLOURS


def report() -> AuditReport:
    return AuditReport(
        [
            AuditRow(
                "boat",
                "target",
                "boat",
                site_drift=0.9,
                denoiser_drift=0.8,
                ssim=0.3,
                care_original=1.0,
                care_edited=0.1,
            ),
            AuditRow(
                "water",
                "care",
                "water",
                site_drift=0.2,
                denoiser_drift=0.25,
                ssim=0.8,
                care_original=0.9,
                care_edited=0.7,
            ),
            AuditRow(
                "house",
                "unrelated",
                "house",
                site_drift=0.05,
                denoiser_drift=0.1,
                ssim=0.95,
                care_original=0.8,
                care_edited=0.8,
            ),
            AuditRow("car", "unrelated", "car", site_drift=0.01, denoiser_drift=0.02, ssim=0.99),
        ],
        {"seeds": [0, 1]},
    )


def test_json_round_trip_and_summary() -> None:
    r = report()
    data = json.loads(r.to_json())
    assert data["summary_by_tag"]["site_drift"]["unrelated"] == pytest.approx(0.03)
    assert data["rows"][0]["care_loss"] == pytest.approx(0.9)
    assert data["rows"][3]["care_loss"] is None
    assert AuditReport.from_json(r.to_json()).rows == r.rows


def test_csv_has_every_metric_column() -> None:
    rows = list(csv.DictReader(io.StringIO(report().to_csv())))
    assert [row["concept"] for row in rows] == ["boat", "water", "house", "car"]
    assert float(rows[0]["care_loss"]) == pytest.approx(0.9)
    assert rows[3]["care_loss"] == "" and rows[3]["psnr"] == ""


def test_rank_agreement_orients_metrics_by_damage() -> None:
    r = report()
    assert r.rank_agreement("site_drift", "denoiser_drift") == pytest.approx(1.0)
    assert r.rank_agreement("site_drift", "ssim") == pytest.approx(1.0)  # low SSIM = damage
    assert r.rank_agreement("site_drift", "care_loss") == pytest.approx(1.0)
    assert r.rank_agreement("site_drift", "care_loss", tags=("target",)) is None  # too few rows


def test_as_table_lists_measured_metrics_only() -> None:
    text = report().as_table()
    assert "site drift" in text and "PSNR" not in text


def test_shade_is_green_when_good_red_when_bad() -> None:
    assert shade("site_drift", 0.0) == GOOD and shade("site_drift", 5.0) == BAD
    assert shade("ssim", 1.0) == GOOD and shade("ssim", 0.2) == BAD


def test_table_image_has_tag_chips_and_grows_with_rows() -> None:
    r = report()
    img = table_image(r)
    colours = {c for _, c in img.getcolors(maxcolors=1 << 20)}
    assert TAG_COLOURS["target"] in colours and TAG_COLOURS["care"] in colours and GOOD in colours
    smaller = table_image(AuditReport(r.rows[:2]))
    assert smaller.height < img.height


def test_bar_plot_draws_a_panel_per_metric() -> None:
    r = report()
    one, all_ = bar_plot(r, ["site_drift"]), bar_plot(r)
    assert all_.width > one.width and all_.height == one.height
    colours = {c for _, c in one.getcolors(maxcolors=1 << 20)}
    assert {TAG_COLOURS["target"], TAG_COLOURS["care"], TAG_COLOURS["unrelated"]} <= colours
    with pytest.raises(ValueError):
        bar_plot(AuditReport([AuditRow("x", "target", "x")]))


def test_bars_grow_with_damage_in_every_metric_orientation() -> None:
    from erasure.audit.plots import PANEL_W, damage_fraction

    assert damage_fraction("site_drift", 0.0) == 0.0 and damage_fraction("site_drift", 0.5) == pytest.approx(0.5)
    assert damage_fraction("ssim", 1.0) == 0.0 and damage_fraction("ssim", 0.75) == pytest.approx(0.5)
    assert damage_fraction("psnr", 50.0) == 0.0 and damage_fraction("psnr", 0.0) == 1.0  # clamped
    # a target row at half the site-drift scale has a bar a quarter-panel longer than one at a quarter

    def target_pixels(drift: float) -> int:
        img = bar_plot(AuditReport([AuditRow("boat", "target", "boat", site_drift=drift)]), ["site_drift"])
        pixels = img.load()
        return max(sum(pixels[x, y] == TAG_COLOURS["target"] for x in range(img.width)) for y in range(img.height))

    assert target_pixels(0.5) - target_pixels(0.25) == PANEL_W // 4
