"""The toy world as a neighbours backend: its vocabulary, a fingerprinted encoder, a sampler and a detector.

Used by the CLI (``care-erasure scan`` / ``suggest``) and the benchmark; imports the toy world lazily.
The shipped vocabulary means little to the toy text encoder (it knows ~30 words and reads the rest as
``<unk>``), so the toy vocabulary is the world's own concepts: objects, backgrounds and colour words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .embed import FingerprintedEncoder, state_fingerprint
from .image import Detect, Generate
from .vocab import Vocabulary

SYNONYM_TEMPLATES = ("a {}", "the {}")
"""Phrases that name an object exactly as the caption grammar does: near-synonyms of the bare word."""


def toy_vocabulary(world: Any, synonyms: bool = False) -> Vocabulary:
    """Objects, backgrounds and colour words (categories ``objects``, ``scenes``, ``colours``); with
    ``synonyms``, also ``"a <object>"`` and ``"the <object>"`` (category ``near-synonym``)."""
    colours = sorted({c for options in world.object_colours.values() for c in options})
    pairs = [(o, "objects") for o in world.objects] + [(b, "scenes") for b in world.backgrounds]
    pairs += [(c, "colours") for c in colours]
    if synonyms:
        pairs += [(t.format(o), "near-synonym") for o in world.objects for t in SYNONYM_TEMPLATES]
    return Vocabulary.from_pairs(pairs)


def toy_encoder(model: Any) -> FingerprintedEncoder:
    """The model's text encoder with a fingerprint of its weights and tokenizer (so its vocabulary caches)."""
    return FingerprintedEncoder(model.encoder(), state_fingerprint(model.text.state_dict(), "|".join(model.tokenizer.vocab)))


def toy_generate(model: Any, steps: int) -> Generate:
    from ..toyworld.config import SamplerConfig
    from ..toyworld.sampler import sample

    config = SamplerConfig(steps=steps)

    def generate(prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        return sample(model, list(prompts), list(seeds), config)

    return generate


def toy_detect(detector: Any) -> Detect:
    def detect(images: torch.Tensor) -> dict[str, Any]:
        found = detector.detect(images)
        return {label: detector.present(found, label) for label in detector.world.labels}

    return detect


PREDICTION_SEEDS = tuple(range(8))
"""Seeds of the pure-noise starts averaged by :func:`toy_predict` (8 keep it to one small batch per prompt)."""
TOY_IMAGE_SIZE = 32
"""Side of the toy world's RGB images (``WorldConfig.image_size``; the sampler draws at this size)."""
GUIDANCE = 4.0
"""Classifier-free guidance of the prediction, as in the toy sampler's default."""


@torch.no_grad()
def toy_predict(model: Any, prompts: Sequence[str], seeds: Sequence[int] = PREDICTION_SEEDS) -> torch.Tensor:
    """``[N, 3 * size * size]``: per prompt, the mean over ``seeds`` of the guided one-step clean-image estimate
    ``x0_hat = (x_T - sqrt(1 - abar_T) eps) / sqrt(abar_T)`` from pure noise at the last timestep."""
    from ..toyworld.sampler import initial_noise

    n = len(seeds)
    t_last = model.cfg.num_train_timesteps - 1
    abar = model.alphas_cumprod[t_last]
    x = initial_noise(list(seeds), (3, TOY_IMAGE_SIZE, TOY_IMAGE_SIZE))
    tt = torch.full((2 * n,), t_last, dtype=torch.long)
    uncond, umask = model.condition([""] * n)
    out = []
    for prompt in prompts:
        cond, cmask = model.condition([prompt] * n)
        eps_u, eps_c = model.unet(torch.cat([x, x]), tt, torch.cat([uncond, cond]), torch.cat([umask, cmask])).chunk(2)
        eps = eps_u + GUIDANCE * (eps_c - eps_u)
        x0 = ((x - (1 - abar).sqrt() * eps) / abar.sqrt()).clamp(-1, 1)
        out.append(x0.mean(0).flatten())
    return torch.stack(out)
