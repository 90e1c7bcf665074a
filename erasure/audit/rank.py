"""Rank statistics: Spearman's correlation (Spearman 1904: the Pearson correlation of the two samples'
ranks, ties given their average rank) and the ROC AUC (Mann-Whitney U). Written out here so the engine
needs no statistics package."""

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


def auc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for telling the ``positive`` items from the rest: the
    probability that a random positive scores above a random negative, ties counting one half
    (the Mann-Whitney U statistic over ``n_pos * n_neg``). ``None`` when either class is empty."""
    if len(scores) != len(positive):
        raise ValueError(f"samples differ in length ({len(scores)} vs {len(positive)})")
    pos = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = float(ranks(scores)[pos].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
