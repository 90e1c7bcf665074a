"""Spearman rank correlation (Spearman 1904): the Pearson correlation of the two samples' ranks, ties
given their average rank. Written out here so the engine needs no statistics package."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks with ties averaged."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """``rho = corr(rank(a), rank(b))``; ``None`` when either sample is constant or shorter than 2."""
    if len(a) != len(b):
        raise ValueError(f"samples differ in length ({len(a)} vs {len(b)})")
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return None if den == 0.0 else float((ra * rb).sum() / den)
