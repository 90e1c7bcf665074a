r"""How each vocabulary concept relates to the targets: alignment, residual, and the two flags.

Text-encoder vectors share a large common component (every CLIP token vector leans the same way), so raw
cosines between concepts are all close to 1 and say little. Relations are therefore measured on
*centred, normalised pooled vectors*

.. math::  u_i = \frac{p_i - \mu}{\lVert p_i - \mu\rVert}, \qquad \mu = \tfrac1N \textstyle\sum_j p_j

(``p_i`` the pooled vector of concept ``i``, :mod:`.embed`; ``mu`` the vocabulary mean). With ``u_t`` the
same for every target ``t``, each concept has

.. math::  \alpha_i = \max_t\, u_i^\top u_t \in [-1, 1], \qquad \rho_i = \sqrt{1 - \max(\alpha_i, 0)^2}

the *alignment* with its nearest target and the *residual* left after projecting on that target's
direction (the sine of the angle; concepts pointing away from every target have residual 1). Following the
CARE paper's idea of removing the extreme clusters by their residual to the target direction:

* **near-synonyms** form the low-residual extreme: ``rho_i <= synonym_residual`` (default
  :data:`SYNONYM_RESIDUAL`, i.e. within ~30 degrees of the target). Such a concept *is* the target for
  the model; protecting it would cancel the erasure, so it is flagged "erase it too", never suggested;
* concepts whose words contain every word of a target (``"sailing boat"`` for ``"boat"``) are flagged
  the same way whatever their residual: their own prompt contains the target;
* **unrelated** concepts form the high-residual bulk: alignment no higher than a typical concept of the
  vocabulary, judged by a robust z-score ``z_i = (alpha_i - median(alpha)) / (1.4826 MAD(alpha))``
  (``1.4826 MAD`` estimates a standard deviation without being pulled by the few related concepts);
  ``z_i < related_z`` (default :data:`RELATED_Z`) is unrelated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .vocab import normalise

SYNONYM_RESIDUAL = 0.5
"""Residual below which a concept counts as a near-synonym: sin(30 deg), i.e. cosine >= 0.87 to the span."""
RELATED_Z = 3.0
"""Robust z-score a concept's alignment (or risk) must reach to count as related: three standard deviations,
which an unrelated concept of a normal spread passes with probability ~0.1% (about one in a 1,000-concept list)."""
MAD_TO_STD = 1.4826
"""Median absolute deviation -> standard deviation of a normal distribution."""
EPS = 1e-12


@dataclass(frozen=True)
class Relation:
    """Per-concept alignment, residual and flags with respect to a set of targets."""

    alignment: torch.Tensor  # [N] float64, cosine to the nearest target
    residual: torch.Tensor  # [N] float64
    contains_target: torch.Tensor  # [N] bool
    near_synonym: torch.Tensor  # [N] bool (residual test only)
    is_target: torch.Tensor  # [N] bool

    @property
    def excluded(self) -> torch.Tensor:
        """Targets, concepts containing a target, and near-synonyms."""
        return self.is_target | self.contains_target | self.near_synonym


def centred_units(pooled: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    x = pooled.double() - mean.double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(EPS)


def contains_words(concept: str, target: str) -> bool:
    """Every word of ``target`` is a word of ``concept`` (``"a boat on water"`` contains ``"boat"``)."""
    words = set(normalise(concept).split())
    return bool(words) and set(normalise(target).split()) <= words


def relate(
    concepts: Sequence[str],
    pooled: torch.Tensor,
    targets: Sequence[str],
    target_pooled: torch.Tensor,
    mean: torch.Tensor | None = None,
    synonym_residual: float = SYNONYM_RESIDUAL,
) -> Relation:
    """Alignment, residual and flags of every concept (module docstring). ``mean`` defaults to the mean of
    ``pooled`` (the vocabulary's own centre)."""
    if not 0.0 <= synonym_residual <= 1.0:
        raise ValueError(f"synonym residual must lie in [0, 1] (got {synonym_residual})")
    mean = pooled.double().mean(0) if mean is None else mean
    units = centred_units(pooled, mean)
    alignment = (units @ centred_units(target_pooled, mean).T).amax(dim=1).clamp(-1.0, 1.0)
    residual = (1.0 - alignment.clamp_min(0.0).pow(2)).sqrt()
    target_names = {normalise(t) for t in targets}
    is_target = torch.tensor([c in target_names for c in concepts], dtype=torch.bool)
    contains = torch.tensor([any(contains_words(c, t) for t in target_names) for c in concepts], dtype=torch.bool)
    near = (residual <= synonym_residual) & ~is_target
    return Relation(alignment, residual, contains & ~is_target, near, is_target)


def robust_z(values: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """``(v - median) / (1.4826 MAD)`` with median and MAD taken over ``reference`` (default ``values``)."""
    ref = (values if reference is None else reference).double()
    if ref.numel() == 0:
        return torch.zeros_like(values, dtype=torch.float64)
    med = ref.median()
    mad = (ref - med).abs().median() * MAD_TO_STD
    scale = mad if mad > EPS else ref.std(unbiased=False).clamp_min(EPS)
    return (values.double() - med) / scale
