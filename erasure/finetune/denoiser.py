"""What fine-tuning needs from a denoiser, and the noisy latents ``x_t`` it trains on.

A :class:`Denoiser` predicts noise in the variance-preserving convention of DDPM::

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,     eps_theta(x_t, t, cond) ~ eps        (5)

with ``abar = alphas_cumprod`` indexed by integer timesteps. The toy world implements it directly
(:mod:`erasure.finetune.toy`); the ComfyUI glue converts to ComfyUI's sigma convention
(``sigma_t = sqrt((1 - abar_t) / abar_t)``, ``x = x_t / sqrt(abar_t)``).

Noisy latents come from one of two sources (:class:`LatentPool`):

* **partial sampling** (ESD): DDIM with classifier-free guidance from seeded noise, under the prompt
  itself, with the frozen model; every intermediate ``x_t`` of every trajectory is kept, so an iteration
  draws a (trajectory, step) pair instead of re-sampling (the pool is built once, before training);
* **user latents**: clean ``x_0`` noised by eq. (5) at a drawn timestep.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

Cond = Any
"""A denoiser's conditioning for a batch of prompts (opaque to the trainer)."""


@runtime_checkable
class Denoiser(Protocol):
    """The model fine-tuning adapts. ``root`` holds the linear maps adapters attach to; adapter and
    Delta names are module paths relative to it (e.g. ``input_blocks.1.1.transformer_blocks.0.attn2.to_k``)."""

    @property
    def root(self) -> nn.Module: ...

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent, without the batch dimension."""
        ...

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """``abar_t`` for ``t = 0 .. T-1`` (float, CPU)."""
        ...

    @property
    def device(self) -> torch.device: ...

    @property
    def x0_clip(self) -> float | None:
        """Clamp DDIM's predicted ``x_0`` to ``[-v, v]`` (pixel-space models) or ``None`` (latents)."""
        ...

    def encode(self, prompts: Sequence[str]) -> Cond:
        """Conditioning for ``prompts`` (no gradient)."""
        ...

    def concat(self, conds: Sequence[Cond]) -> Cond:
        """One conditioning for the concatenated batches of ``conds``."""
        ...

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        """Noise prediction ``[B, *latent_shape]`` for ``x_t`` at integer timesteps ``t [B]``."""
        ...


class PromptCache:
    """Encodes each distinct prompt once and assembles batch conditionings from the cache."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self._cache: dict[str, Cond] = {}

    def __call__(self, prompts: Sequence[str]) -> Cond:
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        for p in missing:
            self._cache[p] = self.denoiser.encode([p])
        return self.denoiser.concat([self._cache[p] for p in prompts])


def ddim_timesteps(num_train: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps from ``num_train - 1`` down to 0 (as the toy sampler)."""
    if steps < 1:
        raise ValueError("DDIM needs at least one step")
    if steps == 1:
        return [num_train - 1]
    return [round(i * (num_train - 1) / (steps - 1)) for i in reversed(range(steps))]


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...]) -> torch.Tensor:
    """Per-seed standard normal latents: the same seed gives the same latent in any batch."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


@dataclass
class LatentPool:
    """Noisy latents per prompt: ``latents[p]`` is ``[N, *shape]`` with timesteps ``timesteps[p]`` ``[N]``."""

    latents: dict[str, torch.Tensor]
    timesteps: dict[str, torch.Tensor]

    def draw(self, prompt: str, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """One ``(x_t, t)`` of ``prompt``'s pool, chosen by ``generator``."""
        n = self.latents[prompt].shape[0]
        i = int(torch.randint(n, (1,), generator=generator))
        return self.latents[prompt][i], int(self.timesteps[prompt][i])


@torch.no_grad()
def sampled_pool(
    denoiser: Denoiser,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    encode: Callable[[Sequence[str]], Cond],
    progress: Callable[[], None] | None = None,
    autocast: Callable[[], Any] | None = None,
) -> LatentPool:
    """Partial-sampling pool: DDIM (eta 0) trajectories of every prompt from every seed, each
    intermediate ``x_t`` (before the step at ``t`` is taken) kept with its ``t``.

    The DDIM update with CFG ``e = e_u + g (e_c - e_u)`` is
    ``x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev) e`` with ``x0 = (x_t - sqrt(1 - abar_t) e) / sqrt(abar_t)``.
    ``progress()`` is called once per prompt (it may raise to interrupt).
    """
    ab = denoiser.alphas_cumprod.float()
    ts = ddim_timesteps(ab.shape[0], steps)
    device = denoiser.device
    latents: dict[str, torch.Tensor] = {}
    timesteps: dict[str, torch.Tensor] = {}
    for prompt in dict.fromkeys(prompts):
        b = len(seeds)
        x = initial_noise(seeds, denoiser.latent_shape).to(device)
        cond = encode([""] * b + [prompt] * b)
        kept = []
        for i, t in enumerate(ts):
            kept.append(x.float().cpu())
            a_t = ab[t].to(device)
            a_prev = ab[ts[i + 1]].to(device) if i + 1 < len(ts) else torch.tensor(1.0, device=device)
            tt = torch.full((2 * b,), t, dtype=torch.long, device=device)
            with autocast() if autocast is not None else contextlib.nullcontext():
                e_u, e_c = denoiser.eps(torch.cat([x, x]), tt, cond).float().chunk(2)
            e = e_u + guidance * (e_c - e_u)
            x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            if denoiser.x0_clip is not None:
                x0 = x0.clamp(-denoiser.x0_clip, denoiser.x0_clip)
                e = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
        latents[prompt] = torch.stack(kept, dim=1).flatten(0, 1)  # [seeds * steps, ...]
        timesteps[prompt] = torch.tensor(ts, dtype=torch.long).repeat(b)
        if progress is not None:
            progress()
    return LatentPool(latents, timesteps)


def noised_pool(
    denoiser: Denoiser,
    prompts: Sequence[str],
    clean: torch.Tensor,
    draws: int,
    generator: torch.Generator,
) -> LatentPool:
    """User-latent pool: each clean latent in ``clean [M, *shape]`` noised by eq. (5) at ``draws``
    timesteps drawn uniformly from ``[0, T)``; every prompt shares the same pool."""
    if clean.ndim != len(denoiser.latent_shape) + 1 or tuple(clean.shape[1:]) != tuple(denoiser.latent_shape):
        raise ValueError(f"latents of shape {tuple(clean.shape)} do not fit the denoiser ({denoiser.latent_shape})")
    ab = denoiser.alphas_cumprod.float()
    x0 = clean.float().cpu().repeat_interleave(draws, dim=0)
    t = torch.randint(ab.shape[0], (x0.shape[0],), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    a = ab[t].view(-1, *([1] * (x0.ndim - 1)))
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    return LatentPool({p: x_t for p in prompts}, {p: t for p in prompts})

