"""The audit report: one row per probe, every metric that was measured, and how to read them together.

Each metric is oriented by :data:`METRICS` (whether a larger value means more damage) and given a
colour scale ``(good, bad)``: values at ``good`` are drawn green, at ``bad`` red, linearly in between.
The scales are fixed (not per report) so two reports can be compared by eye.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from .probes import TAGS
from .rank import spearman


@dataclass(frozen=True)
class Metric:
    label: str
    more_is_damage: bool
    good: float  # value drawn green
    bad: float  # value drawn red


METRICS: dict[str, Metric] = {
    "site_drift": Metric("site drift", True, 0.0, 1.0),
    "denoiser_drift": Metric("denoiser drift", True, 0.0, 1.0),
    "ssim": Metric("SSIM", False, 1.0, 0.5),
    "psnr": Metric("PSNR dB", False, 35.0, 10.0),
    "care_original": Metric("CARE orig", False, 1.0, 0.0),
    "care_edited": Metric("CARE erased", False, 1.0, 0.0),
    "care_loss": Metric("CARE loss", True, 0.0, 1.0),
}
"""Metric name -> label, orientation and colour scale."""


@dataclass
class AuditRow:
    concept: str
    tag: str
    prompt: str
    site_drift: float | None = None
    denoiser_drift: float | None = None
    ssim: float | None = None
    psnr: float | None = None
    care_original: float | None = None
    care_edited: float | None = None

    @property
    def care_loss(self) -> float | None:
        """``CARE_original - CARE_edited``: the share of images that lost the concept."""
        if self.care_original is None or self.care_edited is None:
            return None
        return self.care_original - self.care_edited

    def value(self, metric: str) -> float | None:
        if metric not in METRICS:
            raise KeyError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")
        return getattr(self, metric)

    def damage(self, metric: str) -> float | None:
        """The metric oriented so that larger always means more damage."""
        v = self.value(metric)
        return None if v is None else (v if METRICS[metric].more_is_damage else -v)


@dataclass
class AuditReport:
    rows: list[AuditRow]
    settings: dict[str, object] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)

    # ------------------------------------------------------------------------------ reading
    def metrics(self) -> list[str]:
        """Metrics measured for at least one row, in :data:`METRICS` order."""
        return [m for m in METRICS if any(r.value(m) is not None for r in self.rows)]

    def row(self, concept: str) -> AuditRow:
        for r in self.rows:
            if r.concept == concept:
                return r
        raise KeyError(f"no audit row for '{concept}'")

    def by_tag(self, metric: str) -> dict[str, float | None]:
        """Mean of ``metric`` per tag (``None`` where no row of that tag has it)."""
        out: dict[str, float | None] = {}
        for tag in TAGS:
            values = [v for r in self.rows if r.tag == tag and (v := r.value(metric)) is not None]
            out[tag] = sum(values) / len(values) if values else None
        return out

    def rank_agreement(self, metric_a: str, metric_b: str, tags: Sequence[str] = TAGS) -> float | None:
        """Spearman correlation between two metrics' damage over rows with both (``None`` below 3 rows)."""
        pairs = [
            (a, b)
            for r in self.rows
            if r.tag in tags
            if (a := r.damage(metric_a)) is not None and (b := r.damage(metric_b)) is not None
        ]
        return spearman([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None

    # ------------------------------------------------------------------------------ writing
    def to_dict(self) -> dict[str, object]:
        rows = [asdict(r) | {"care_loss": r.care_loss} for r in self.rows]
        summary = {m: self.by_tag(m) for m in self.metrics()}
        return {"rows": rows, "summary_by_tag": summary, "settings": self.settings, "stats": self.stats}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AuditReport:
        data = json.loads(text)
        names = {f.name for f in fields(AuditRow)}
        rows = [AuditRow(**{k: v for k, v in r.items() if k in names}) for r in data["rows"]]
        return cls(rows, data.get("settings", {}), data.get("stats", {}))

    def to_csv(self) -> str:
        columns = ["concept", "tag", "prompt", *METRICS]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in self.rows:
            writer.writerow(
                [r.concept, r.tag, r.prompt, *("" if (v := r.value(m)) is None else f"{v:.6g}" for m in METRICS)]
            )
        return buf.getvalue()

    def as_table(self) -> str:
        """Plain text, for consoles and text widgets."""
        metrics = self.metrics()
        head = f"{'concept':<18} {'tag':<9} " + " ".join(f"{METRICS[m].label:>12}" for m in metrics)
        lines = [head]
        for r in self.rows:
            cells = " ".join(f"{'-' if (v := r.value(m)) is None else f'{v:.4f}':>12}" for m in metrics)
            lines.append(f"{r.concept[:18]:<18} {r.tag:<9} {cells}")
        lines.append("")
        for m in metrics:
            means = self.by_tag(m)
            lines.append(
                f"mean {METRICS[m].label:<14} "
                + "  ".join(f"{t}={'-' if v is None else f'{v:.4f}'}" for t, v in means.items())
            )
        return "\n".join(lines)
