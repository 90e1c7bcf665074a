"""One audit: every metric that the given pieces allow, gathered into an :class:`AuditReport`.

* site drift       needs ``sites`` + ``updates`` + ``encoder``;
* denoiser drift   needs ``original`` + ``edited`` denoisers;
* paired fidelity  needs ``images`` (original and edited batches per probe, same seeds in the same order);
* CARE score       needs ``images`` + a ``classifier`` that knows the concept.

Anything missing leaves its columns empty. ``progress(done, total)`` is called after each unit of work and
may raise to interrupt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..delta import LowRankUpdate
from ..sites import EditSite
from ..vectors import TextEncoder, TokenScope
from .care import Classifier, as_nchw, care_score
from .denoiser import DEFAULT_SEEDS, Denoiser, denoiser_drift
from .drift import site_drift
from .fidelity import paired_fidelity
from .probes import Probe
from .report import AuditReport, AuditRow


@dataclass(frozen=True)
class ImagePair:
    """Images ``[N, 3, H, W]`` (or ComfyUI ``[N, H, W, 3]``) of one probe from both models, seed-paired."""

    original: torch.Tensor
    edited: torch.Tensor


def run_audit(
    probes: Sequence[Probe],
    *,
    sites: Sequence[EditSite] = (),
    updates: Mapping[str, LowRankUpdate] | None = None,
    encoder: TextEncoder | None = None,
    scope: TokenScope = "concept_to_eos",
    original: Denoiser | None = None,
    edited: Denoiser | None = None,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    timesteps: Sequence[int] | None = None,
    images: Mapping[str, ImagePair] | None = None,
    classifier: Classifier | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """The report of every metric the arguments allow (module docstring); keyed by ``probe.concept``."""
    if not probes:
        raise ValueError("nothing to audit: give at least one concept or prompt")
    rows = [AuditRow(p.concept, p.tag, p.prompt) for p in probes]
    do_sites = bool(sites) and updates is not None and encoder is not None
    do_denoiser = original is not None and edited is not None
    images = images or {}
    total = (len(sites) if do_sites else 0) + (2 * len(probes) if do_denoiser else 0) + len(images)
    done = 0

    def tick(*_: int) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    if do_sites:
        for row, v in zip(rows, site_drift(sites, updates, encoder, probes, scope, tick)):  # type: ignore[arg-type]
            row.site_drift = v
    if do_denoiser:
        for row, v in zip(rows, denoiser_drift(original, edited, probes, seeds, timesteps, tick)):  # type: ignore[arg-type]
            row.denoiser_drift = v
    for row in rows:
        pair = images.get(row.concept)
        if pair is None:
            continue
        a, b = as_nchw(pair.original), as_nchw(pair.edited)
        row.ssim, row.psnr = paired_fidelity(list(a), list(b))
        if classifier is not None:
            row.care_original = care_score(classifier, a, row.concept)
            row.care_edited = care_score(classifier, b, row.concept)
        tick()
    settings = {"scope": scope, "seeds": list(seeds), "timesteps": list(timesteps) if timesteps else "default"}
    return AuditReport(rows, settings)
