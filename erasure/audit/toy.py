"""The audit on the toy world: its model as a :class:`Denoiser`, its detector as a :class:`Classifier`,
and one call that samples paired images, measures everything and draws the comparison grid.

Imports the toy world lazily so the rest of the audit never needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..delta import Delta
from ..grid import GridRow, model_seed_grid
from ..sites import EditSite, discover_sites
from .probes import UNRELATED, Probe, dedupe
from .report import AuditReport
from .run import ImagePair, run_audit

TOY_IMAGE_SIZE = 32  # the toy world's images are 32 x 32 RGB (erasure.toyworld.config.WorldConfig)
AUDIT_SAMPLER_STEPS = 20  # DDIM steps for audit images (fewer than the default 25; the toy world converges)


class ToyDenoiser:
    """:class:`erasure.audit.denoiser.Denoiser` over a ``ToyModel``: conditioning is ``(vectors, mask)``."""

    def __init__(self, model: Any, image_size: int = TOY_IMAGE_SIZE) -> None:
        self.model = model
        self._shape = (3, image_size, image_size)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.alphas_cumprod

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def condition(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.model.condition(list(prompts))

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return self.model.unet(x_t, t, cond[0], cond[1])


class DetectorClassifier:
    """:class:`erasure.audit.care.Classifier` over the toy world's ``ConceptDetector``."""

    def __init__(self, detector: Any) -> None:
        self.detector = detector

    def knows(self, concept: str) -> bool:
        return concept in self.detector.world.labels

    def present(self, images: torch.Tensor, concept: str) -> np.ndarray:
        return np.asarray(self.detector.present(self.detector.detect(images), concept), dtype=bool)


def toy_prompt(concept: str, world: Any) -> str:
    """How the toy world's captions name a label: "a boat" for objects, "water" / "the sky" for backgrounds."""
    from ..toyworld.config import BACKGROUND_ALONE
    from ..toyworld.renderer import object_phrase

    if concept in world.objects:
        return object_phrase(concept, None)
    return BACKGROUND_ALONE.get(concept, concept)


def toy_probes(probes: Sequence[Probe], world: Any, every_label: bool = True) -> list[Probe]:
    """``probes`` with toy-world prompts for the concepts the world knows, then (``every_label``) every other
    detector label as an unrelated probe, so the audit ranks damage over the whole world."""
    out = [Probe(p.concept, p.tag, toy_prompt(p.concept, world)) if p.concept in world.labels else p for p in probes]
    if every_label:
        out += [Probe(label, UNRELATED, toy_prompt(label, world)) for label in world.labels]
    return dedupe(out)


def toy_sites(model: Any) -> list[EditSite]:
    """The toy UNet's cross-attention keys and values."""
    return discover_sites(model.unet.state_dict(), "unet_kv")


@dataclass
class ToyAudit:
    report: AuditReport
    grid: Image.Image
    images: dict[str, ImagePair]


def toy_audit(
    model: Any,
    delta: Delta,
    probes: Sequence[Probe],
    seeds: Sequence[int],
    detector: Any | None = None,
    sampler_steps: int = AUDIT_SAMPLER_STEPS,
    strength: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> ToyAudit:
    """Apply ``delta`` to a copy of ``model``, sample every probe from both models on ``seeds``, audit."""
    from ..toyworld.config import SamplerConfig
    from ..toyworld.sampler import sample

    sites = toy_sites(model)
    edited = model.with_unet_weights(delta.apply({s.name: s.weight for s in sites}, strength))
    cfg = replace(SamplerConfig(), steps=sampler_steps)
    prompts = [p.prompt for p in probes for _ in seeds]
    all_seeds = [s for _ in probes for s in seeds]
    orig_imgs = sample(model, prompts, all_seeds, cfg).view(len(probes), len(seeds), 3, TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)
    edit_imgs = sample(edited, prompts, all_seeds, cfg).view(len(probes), len(seeds), 3, TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)
    images = {p.concept: ImagePair(orig_imgs[i], edit_imgs[i]) for i, p in enumerate(probes)}
    report = run_audit(
        probes,
        sites=sites,
        updates=delta.updates,
        encoder=model.encoder(),
        original=ToyDenoiser(model),
        edited=ToyDenoiser(edited),
        seeds=seeds,
        images=images,
        classifier=DetectorClassifier(detector) if detector is not None else None,
        progress=progress,
    )
    report.settings |= {"sampler_steps": sampler_steps, "strength": strength}
    rows = [GridRow(p.prompt, p.tag) for p in probes]
    grid = model_seed_grid(
        [[list(orig_imgs[i]) for i in range(len(probes))], [list(edit_imgs[i]) for i in range(len(probes))]],
        rows,
        ["original", "erased"],
        seeds,
        title="toy world: original vs erased",
        cell=64,
    )
    return ToyAudit(report, grid, images)
