r"""Risk scan: rank every vocabulary concept by the collateral damage an edit predicts for it.

The damage measure is the retained drift of :mod:`erasure.report`, taken over every site ``s`` and every
token vector ``r`` of a concept (its rows in the erasure's token scope, :mod:`.embed`):

.. math::

    \delta_i = \sqrt{\frac{\sum_s \sum_{r \in i} \lVert \Delta W_s\, r \rVert^2}
                          {\sum_s \sum_{r \in i} \lVert W_s\, r \rVert^2}}                  \tag{1}

Both sums are quadratic forms, which is what makes a 10,000-concept scan cheap:

* denominator: ``sum_s |W_s r|^2 = r^T Q r`` with ``Q = sum_s W_s^T W_s`` (``d x d``). It depends on the
  model and the vocabulary only, so a :class:`RiskIndex` computes it once and every scan reuses it;
* numerator: ``Delta W_s = U_s D_s`` (LoRA factors, rank ``k``) gives
  ``|U_s D_s r|^2 = (D_s r)^T (U_s^T U_s)(D_s r)``. Sites sharing the same ``D`` (the closed form gives
  one ``D = V^T`` per input width, ``solve`` eq. 3) are summed first, ``K = sum_s U_s^T U_s``, so a scan
  costs one ``R x d x k`` product per distinct ``D`` -- independent of the number of sites.

Targets, concepts containing a target and near-synonyms (:mod:`.relation`) are left out of the ranking
and listed apart: they are meant to change. Optionally the top ``k`` are re-ranked by a *denoiser drift*
computed by a caller-supplied function (e.g. the change of the denoiser's noise prediction for a prompt
naming the concept), which is too expensive for the whole vocabulary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..delta import LowRankUpdate
from ..sites import EditSite
from .embed import VocabularyEmbedding
from .relation import Relation, robust_z

DenoiserDrift = Callable[[Sequence[str]], Sequence[float]]
"""``concepts -> drift per concept`` of the edited denoiser against the original (larger = more damage)."""
DEFAULT_DENOISER_TOP_K = 20
"""How many of the highest site-drift concepts the (expensive) denoiser drift is computed for."""
EPS = 1e-30


def site_gram(sites: Sequence[EditSite]) -> torch.Tensor:
    """``Q = sum_s W_s^T W_s`` (``d x d``, float64; each product in float32, summed in float64)."""
    if not sites:
        raise ValueError("no edit sites to scan against")
    d = sites[0].in_features
    gram = torch.zeros(d, d, dtype=torch.float64)
    for site in sites:
        if site.in_features != d:
            raise ValueError(f"site {site.name} reads {site.in_features}-wide vectors, others {d}; scan one width at a time")
        w = site.weight.detach().to("cpu", torch.float32)
        gram += (w.T @ w).double()
    return gram


def _per_concept(row_values: torch.Tensor, owner: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float64)
    return out.index_add_(0, owner, row_values.double())


def quadratic_rows(rows: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """``r^T M r`` for every row (float32 product, float64 result)."""
    return ((rows @ matrix.to(rows.dtype)) * rows).sum(1).double()


@dataclass(frozen=True)
class RiskIndex:
    """A vocabulary embedding with its output energies ``sum_s |W_s r|^2`` for one model (eq. 1 denominator)."""

    embedding: VocabularyEmbedding
    categories: tuple[str, ...]
    output_energy: torch.Tensor  # [N] float64
    site_names: tuple[str, ...]
    build_seconds: float = 0.0

    @classmethod
    def build(cls, sites: Sequence[EditSite], embedding: VocabularyEmbedding, categories: Sequence[str] | None = None) -> RiskIndex:
        started = time.perf_counter()
        if sites and sites[0].in_features != embedding.width:
            raise ValueError(f"vocabulary vectors are {embedding.width}-wide but the sites read {sites[0].in_features}")
        gram = site_gram(sites)
        energy = _per_concept(quadratic_rows(embedding.rows, gram), embedding.owner(), len(embedding))
        cats = tuple(categories) if categories is not None else ("",) * len(embedding)
        return cls(embedding, cats, energy, tuple(s.name for s in sites), time.perf_counter() - started)

    def update_energy(self, updates: Mapping[str, LowRankUpdate]) -> torch.Tensor:
        """``sum_s |Delta W_s r|^2`` per concept (eq. 1 numerator), grouping sites that share ``D``."""
        unknown = sorted(set(updates) - set(self.site_names))
        if unknown:
            raise ValueError(f"the edit changes sites the index was not built for: {unknown[:3]}")
        groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (down [k, d], K = sum up^T up [k, k])
        for name in self.site_names:
            if name not in updates:
                continue
            up = updates[name].up.detach().to("cpu", torch.float64)
            down = updates[name].down.detach().to("cpu", torch.float32)
            for i, (rep, k) in enumerate(groups):
                if rep.shape == down.shape and (rep is down or torch.equal(rep, down)):
                    groups[i] = (rep, k + up.T @ up)
                    break
            else:
                groups.append((down, up.T @ up))
        rows = self.embedding.rows
        total = torch.zeros(rows.shape[0], dtype=torch.float64)
        for down, k in groups:
            y = (rows @ down.T).double()
            total += ((y @ k) * y).sum(1)
        return _per_concept(total, self.embedding.owner(), len(self.embedding))

    def drift(self, updates: Mapping[str, LowRankUpdate]) -> torch.Tensor:
        """Eq. (1) for every concept, ``[N]`` float64."""
        return (self.update_energy(updates) / self.output_energy.clamp_min(EPS)).sqrt()


@dataclass(frozen=True)
class RiskRow:
    concept: str
    category: str
    drift: float
    z: float  # robust z-score of the drift over the scanned vocabulary (how exceptional it is)
    denoiser_drift: float | None = None


@dataclass(frozen=True)
class ExcludedRow:
    concept: str
    category: str
    drift: float
    reason: str  # "target" | "contains target" | "near-synonym"


@dataclass
class RiskReport:
    rows: list[RiskRow]  # ranked, most damaged first
    excluded: list[ExcludedRow]
    stats: dict[str, object] = field(default_factory=dict)

    def top(self, k: int) -> list[str]:
        return [r.concept for r in self.rows[:k]]

    def care_text(self, k: int) -> str:
        """The ``k`` most damaged concepts, one per line: paste into a concept set's CARE list."""
        return "\n".join(self.top(k))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def as_table(self, limit: int = 20) -> str:
        lines = ["rank  concept                    category    drift     z   denoiser"]
        for i, r in enumerate(self.rows[:limit], 1):
            den = "" if r.denoiser_drift is None else f"{r.denoiser_drift:9.4f}"
            lines.append(f"{i:4d}  {r.concept[:26]:<26} {r.category[:10]:<10} {r.drift:7.4f} {r.z:5.1f} {den}")
        if self.excluded:
            lines += ["", "not ranked (meant to change with the target):"]
            lines += [f"      {e.concept[:26]:<26} {e.reason:<16} drift {e.drift:.4f}" for e in self.excluded[:limit]]
        if self.stats:
            lines += ["", "  ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))]
        return "\n".join(lines)


def exclusion_reason(relation: Relation, i: int) -> str | None:
    if relation.is_target[i]:
        return "target"
    if relation.contains_target[i]:
        return "contains target"
    if relation.near_synonym[i]:
        return "near-synonym"
    return None


def scan(
    index: RiskIndex,
    updates: Mapping[str, LowRankUpdate],
    relation: Relation | None = None,
    top_k: int | None = None,
    denoiser_drift: DenoiserDrift | None = None,
    denoiser_top_k: int = DEFAULT_DENOISER_TOP_K,
) -> RiskReport:
    """Rank the vocabulary by eq. (1); ``relation`` (for the edit's targets) removes what should change."""
    started = time.perf_counter()
    drift = index.drift(updates)
    n = len(index.embedding)
    excluded_mask = relation.excluded if relation is not None else torch.zeros(n, dtype=torch.bool)
    kept = (~excluded_mask).nonzero().flatten()
    z = robust_z(drift, drift[kept]) if kept.numel() else torch.zeros(n, dtype=torch.float64)
    order = kept[torch.argsort(drift[kept], descending=True, stable=True)]
    if top_k is not None:
        order = order[:top_k]
    concepts, cats = index.embedding.concepts, index.categories
    drift_list, z_list = drift.tolist(), z.tolist()  # Python floats once, not one tensor index per row
    rows = [RiskRow(concepts[i], cats[i], drift_list[i], z_list[i]) for i in order.tolist()]
    excluded = []
    if relation is not None:
        for i in excluded_mask.nonzero().flatten().tolist():
            reason = exclusion_reason(relation, i)
            assert reason is not None
            excluded.append(ExcludedRow(concepts[i], cats[i], drift_list[i], reason))
        excluded.sort(key=lambda e: -e.drift)
    scanned_at = time.perf_counter()
    if denoiser_drift is not None and rows:
        head = rows[:denoiser_top_k]
        values = list(denoiser_drift([r.concept for r in head]))
        if len(values) != len(head):
            raise ValueError(f"denoiser drift returned {len(values)} values for {len(head)} concepts")
        head = [RiskRow(r.concept, r.category, r.drift, r.z, float(v)) for r, v in zip(head, values)]
        head.sort(key=lambda r: -(r.denoiser_drift or 0.0))
        rows = head + rows[len(head):]
    stats = {"concepts": n, "ranked": len(rows), "excluded": len(excluded),
             "scan_s": round(scanned_at - started, 4), "total_s": round(time.perf_counter() - started, 4)}
    return RiskReport(rows, excluded, stats)
