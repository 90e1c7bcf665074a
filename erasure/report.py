"""The erasure report: how close each target came to its anchor, how far each retained concept moved.

Both numbers are measured at the edit sites, aggregated over every site and every selected token vector:

* target residual  ``rho = sqrt(sum |W' c - W a|^2 / sum |W c - W a|^2)`` -- 0 means the target now
  reads exactly like its anchor, 1 means nothing changed;
* retained drift   ``delta = sqrt(sum |(W' - W) r|^2 / sum |W r|^2)`` -- 0 means untouched.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class TargetRow:
    concept: str
    anchor: str
    residual: float


@dataclass(frozen=True)
class RetainedRow:
    concept: str
    weight: float
    care: bool
    drift: float


@dataclass
class EraseReport:
    targets: list[TargetRow]
    retained: list[RetainedRow]
    settings: dict[str, object] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def as_table(self) -> str:
        """A plain-text table a person reads in a console or a ComfyUI text widget."""
        lines = ["target             anchor             residual (0 = erased)"]
        lines += [f"{t.concept[:18]:<18} {(t.anchor or '<empty>')[:18]:<18} {t.residual:8.4f}" for t in self.targets]
        if self.retained:
            lines += ["", "retained           kind     weight   drift (0 = untouched)"]
            lines += [
                f"{r.concept[:18]:<18} {'CARE' if r.care else 'keep':<8} {r.weight:6.2f}   {r.drift:8.4f}"
                for r in sorted(self.retained, key=lambda r: -r.drift)
            ]
        if self.stats:
            lines += ["", "  ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))]
        return "\n".join(lines)
