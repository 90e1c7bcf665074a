"""Deterministic DDIM sampling with classifier-free guidance, batched and seeded per image.

Each image's starting noise comes from its own seed (``torch.Generator().manual_seed(seed)``), so the
same (prompt, seed) gives the same image whatever the batch it is drawn in — which is what paired
fidelity between an original and an edited model needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import SamplerConfig
from .model import ToyModel

UNCONDITIONAL = ""


def initial_noise(seeds: Sequence[int], shape: tuple[int, ...], offset: float = 0.0) -> torch.Tensor:
    """Starting noise, one generator per seed; ``offset`` adds a per-channel constant (offset noise)."""
    out = []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        x = torch.randn(shape, generator=gen)
        if offset > 0:
            x = x + offset * torch.randn((shape[0], 1, 1), generator=gen)
        out.append(x)
    return torch.stack(out)


def ddim_timesteps(t_max: int, steps: int) -> list[int]:
    """Evenly spaced timesteps from ``t_max`` down to 0."""
    return [round(i * t_max / (steps - 1)) for i in reversed(range(steps))] if steps > 1 else [t_max]


def start_timestep(alphas_cumprod: torch.Tensor, min_alpha_bar: float) -> int:
    """The noisiest timestep whose ``alpha_bar >= min_alpha_bar``."""
    ok = (alphas_cumprod >= min_alpha_bar).nonzero()
    return int(ok.max()) if len(ok) else 0


@torch.no_grad()
def sample(
    model: ToyModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    cfg: SamplerConfig = SamplerConfig(),
) -> torch.Tensor:
    """Images ``[N, 3, H, W]`` in [0, 1] for ``prompts[i]`` from ``seeds[i]``; processed in batches."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    size = model.cfg.image_size
    out = []
    for lo in range(0, len(prompts), cfg.batch_size):
        p = list(prompts[lo : lo + cfg.batch_size])
        s = list(seeds[lo : lo + cfg.batch_size])
        out.append(_sample_batch(model, p, s, cfg, size))
    return torch.cat(out)


def _sample_batch(model: ToyModel, prompts: list[str], seeds: list[int], cfg: SamplerConfig, size: int) -> torch.Tensor:
    b = len(prompts)
    x = initial_noise(seeds, (3, size, size), model.cfg.noise_offset)
    cond, cmask = model.condition(prompts)
    uncond, umask = model.condition([UNCONDITIONAL] * b)
    guided = cfg.guidance_scale != 1.0
    context = torch.cat([uncond, cond]) if guided else cond
    mask = torch.cat([umask, cmask]) if guided else cmask
    ab = model.alphas_cumprod
    ts = ddim_timesteps(start_timestep(ab, cfg.min_alpha_bar), cfg.steps)
    gen = torch.Generator().manual_seed(int(seeds[0]) + 1) if cfg.eta > 0 else None
    for i, t in enumerate(ts):
        a_t = ab[t]
        a_prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0)
        tt = torch.full((context.shape[0],), t, dtype=torch.long)
        if guided:
            eps_u, eps_c = model.unet(torch.cat([x, x]), tt, context, mask).chunk(2)
            eps = eps_u + cfg.guidance_scale * (eps_c - eps_u)
        else:
            eps = model.unet(x, tt, context, mask)
        x0 = ((x - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        eps = (x - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = cfg.eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        if cfg.eta > 0:
            x = x + sigma * torch.randn(x.shape, generator=gen)
    return ((x + 1) / 2).clamp(0, 1)
