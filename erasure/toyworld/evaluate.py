"""Erasure on the toy world: concept sets per method, edited models, and detector-scored measurements.

Shared by the benchmark (``benchmarks/toyworld_erasure.py``) and the demo (:mod:`erasure.toyworld.demo`).
A *case* is one target object with its CARE partners — the backgrounds it co-occurs with by
construction (:data:`erasure.toyworld.config.HOME_BACKGROUND`) — and a fixed list of unrelated prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..concepts import DEFAULT_CARE_WEIGHT, DEFAULT_RETAIN_WEIGHT, ConceptSet, ContextPair, Retained, Target
from ..erase import EraseResult, EraseSettings, erase
from ..sites import discover_sites
from .config import BACKGROUND_AFTER_OBJECT, BACKGROUND_ALONE, SamplerConfig, WorldConfig
from .detector import ConceptDetector
from .model import ToyModel
from .renderer import object_phrase
from .sampler import sample

UNRELATED_OBJECTS: tuple[str, ...] = ("house", "tree", "moon", "balloon", "flower", "car", "sun", "fish")
UNRELATED_BACKGROUNDS: tuple[str, ...] = ("grass", "sand", "sky")
N_UNRELATED_OBJECTS = 4

# Method name -> (uses generic retained set, uses CARE set, uses context pairs, strict)
METHODS: dict[str, tuple[bool, bool, bool, bool]] = {
    "naive": (False, False, False, False),
    "generic": (True, False, False, False),
    "care": (False, True, False, False),
    "care+context": (False, True, True, False),
    "strict": (False, True, True, True),
}
METHODS_WITHOUT_CARE: tuple[str, ...] = ("naive", "generic")


@dataclass(frozen=True)
class Prompt:
    """A prompt and the concept the detector should (or should not) find in its images."""

    text: str
    concept: str


@dataclass(frozen=True)
class Case:
    target: str
    care: tuple[str, ...]
    unrelated: tuple[Prompt, ...] = field(default=())

    @property
    def target_prompt(self) -> Prompt:
        return Prompt(object_phrase(self.target, None), self.target)

    @property
    def care_prompts(self) -> tuple[Prompt, ...]:
        return tuple(Prompt(BACKGROUND_ALONE[c], c) for c in self.care)

    @property
    def mixed_prompts(self) -> tuple[Prompt, ...]:
        """"a boat on water" -> water should survive the erasure of boat."""
        return tuple(Prompt(f"{object_phrase(self.target, None)} {BACKGROUND_AFTER_OBJECT[c]}", c) for c in self.care)


def make_case(target: str, world: WorldConfig, n_unrelated_objects: int = N_UNRELATED_OBJECTS) -> Case:
    """The target's CARE partners (its home background, if any) and unrelated prompts sharing neither:
    ``n_unrelated_objects`` objects and one background."""
    home = world.home_background.get(target, (None, 0.0))[0]
    care = (home,) if home else ()
    objs = [o for o in UNRELATED_OBJECTS if o != target and (home is None or world.home_background.get(o, ("",))[0] != home)]
    bg = next(b for b in UNRELATED_BACKGROUNDS if b != home)
    unrelated = tuple(Prompt(object_phrase(o, None), o) for o in objs[:n_unrelated_objects]) + (Prompt(BACKGROUND_ALONE[bg], bg),)
    return Case(target, care, unrelated)


def concept_set(case: Case, method: str, world: WorldConfig) -> tuple[ConceptSet, EraseSettings]:
    """The concept set and settings a method uses for a case (see :data:`METHODS`)."""
    generic, care, context, strict = METHODS[method]
    retained: list[Retained] = []
    if generic:
        retained += [Retained(o, DEFAULT_RETAIN_WEIGHT) for o in world.objects if o != case.target]
    if care:
        retained += [Retained(c, DEFAULT_CARE_WEIGHT, care=True) for c in case.care]
    pairs = [ContextPair(p.text, p.concept) for p in case.mixed_prompts] if context else []
    return ConceptSet([Target(case.target)], retained, pairs), EraseSettings(strict=strict)


def erase_model(model: ToyModel, concepts: ConceptSet, settings: EraseSettings) -> tuple[ToyModel, EraseResult]:
    """Run the engine on the toy model; return the edited copy and the engine's result."""
    sites = discover_sites(model.unet.state_dict())
    result = erase(sites, model.encoder(), concepts, settings)
    weights = result.delta.apply({s.name: s.weight for s in sites})
    return model.with_unet_weights(weights), result


@dataclass
class PromptScore:
    """Detector rate of the prompt's concept, and paired fidelity to the original images."""

    rate: float
    detected: dict[str, float] = field(default_factory=dict)  # every label's rate in these images
    mad: float | None = None  # mean |edited - original| in [0, 1]
    psnr: float | None = None


class Scorer:
    """Samples prompts over fixed seeds and scores them; caches the original model's images."""

    def __init__(self, original: ToyModel, detector: ConceptDetector, seeds: Sequence[int], sampler: SamplerConfig) -> None:
        self.original = original
        self.detector = detector
        self.seeds = list(seeds)
        self.sampler = sampler
        self._original_images: dict[str, torch.Tensor] = {}
        self.last_images: dict[str, torch.Tensor] = {}  # the images of the latest score_many, by prompt

    def images(self, model: ToyModel, prompt: str) -> torch.Tensor:
        if model is self.original:
            if prompt not in self._original_images:
                self._original_images[prompt] = sample(model, [prompt] * len(self.seeds), self.seeds, self.sampler)
            return self._original_images[prompt]
        return sample(model, [prompt] * len(self.seeds), self.seeds, self.sampler)

    def score_many(self, model: ToyModel, prompts: Sequence[Prompt]) -> dict[str, PromptScore]:
        """Sample every prompt in one batched call; rate per prompt, fidelity against the original."""
        texts = [p.text for p in prompts]
        if model is self.original:
            batches = [self.images(model, t) for t in texts]
        else:
            flat = sample(model, [t for t in texts for _ in self.seeds], self.seeds * len(texts), self.sampler)
            batches = list(flat.split(len(self.seeds)))
        self.last_images = dict(zip(texts, batches))
        out = {}
        for p, imgs in zip(prompts, batches):
            det = self.detector.detect(imgs)
            detected = {c: float(self.detector.present(det, c).mean()) for c in self.detector.world.labels}
            score = PromptScore(detected[p.concept], detected)
            if model is not self.original:
                ref = self.images(self.original, p.text)
                diff = imgs - ref
                mse = diff.pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
                score.mad = float(diff.abs().mean())
                score.psnr = float((10 * torch.log10(1.0 / mse)).mean())
            out[p.text] = score
        return out


def mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
