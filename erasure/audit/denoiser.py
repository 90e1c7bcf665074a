"""Denoiser drift: how far an edit moves the noise prediction for a prompt, relative to how much the
prompt itself moves it.

For a prompt ``c``, seeds ``s`` and timesteps ``t``, with ``eps_O`` the original and ``eps_E`` the edited
denoiser and ``""`` the empty prompt::

    D(c) = mean_{s,t} |eps_E(x_t, t, c) - eps_O(x_t, t, c)|  /  mean_{s,t} |eps_O(x_t, t, c) - eps_O(x_t, t, "")|

(L2 norms over a sample; a ratio of means, so a timestep where the prompt barely matters cannot blow it
up). ``D = 0``: the edit left the prompt's effect alone; ``D = 1``: it moved the prediction by as much as
the prompt's whole conditioning signal (what a complete erasure to the empty prompt does).

Where ``x_t`` comes from (no sampling loop): a variance-preserving forward step
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n`` (DDPM, Ho et al. 2020, eq. 4) of a *one-step estimate*
of a clean sample for the prompt, ``x0 = (x_T - sqrt(1 - abar_T) eps_O(x_T, T, c)) / sqrt(abar_T)``
with ``x_T = n_s`` the seed's noise (the DDIM x0 prediction, Song et al. 2021, eq. 12), clamped to the data
range. One extra original evaluation per seed and prompt keeps ``x_t`` near what a sampler visits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from .probes import Probe

HIGHEST_FRACTION, LOWEST_FRACTION = 0.9, 0.3
"""Probed timesteps lie in this part of the schedule (high to mid noise, where layout and content form)."""
DEFAULT_TIMESTEP_COUNT = 4
DEFAULT_TIMESTEP_FRACTIONS: tuple[float, ...] = (0.9, 0.7, 0.5, 0.3)  # spread_fractions(DEFAULT_TIMESTEP_COUNT)
DEFAULT_SEEDS: tuple[int, ...] = (0, 1)
DATA_RANGE = 1.0  # x0 estimates are clamped to [-DATA_RANGE, DATA_RANGE]
EPS = 1e-30
UNCONDITIONAL = ""


@runtime_checkable
class Denoiser(Protocol):
    """What the audit needs from a noise-prediction (epsilon) model.

    alphas_cumprod: ``[T]`` the variance-preserving schedule ``abar_t``.
    sample_shape:   shape of one sample (``[C, H, W]``: pixels for the toy world, latents for SD).
    condition:      prompts -> whatever ``eps`` takes as conditioning (opaque to the audit).
    eps:            ``x_t [B, *sample_shape]``, integer timesteps ``t [B]``, conditioning for B prompts
                    -> predicted noise ``[B, *sample_shape]``.
    """

    @property
    def alphas_cumprod(self) -> torch.Tensor: ...

    @property
    def sample_shape(self) -> tuple[int, ...]: ...

    def condition(self, prompts: Sequence[str]) -> Any: ...

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor: ...


class SigmaDenoiser:
    """A :class:`Denoiser` over a k-diffusion style model ``denoise(x, sigma, cond) -> x0`` (ComfyUI's
    ``apply_model`` for epsilon models), where ``x = x0 + sigma n`` (variance exploding).

    The two parametrisations meet at ``sigma_t = sqrt((1 - abar_t) / abar_t)`` and ``x = x_t / sqrt(abar_t)``
    (Karras et al. 2022, table 1), so ``eps = (x - denoise(x, sigma, c)) / sigma``.
    """

    def __init__(
        self,
        denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        condition: Callable[[Sequence[str]], Any],
        alphas_cumprod: torch.Tensor,
        sample_shape: tuple[int, ...],
    ) -> None:
        self._denoise = denoise
        self._condition = condition
        self._abar = alphas_cumprod.detach().float().cpu()
        self._shape = tuple(sample_shape)

    @classmethod
    def from_sigmas(
        cls,
        denoise: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor],
        condition: Callable[[Sequence[str]], Any],
        sigmas: torch.Tensor,
        sample_shape: tuple[int, ...],
    ) -> SigmaDenoiser:
        """From a discrete sigma schedule (ComfyUI's ``model_sampling.sigmas``): ``abar = 1 / (1 + sigma^2)``."""
        sigmas = sigmas.detach().double().cpu()
        return cls(denoise, condition, (1.0 / (1.0 + sigmas**2)).float(), sample_shape)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._abar

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self._shape

    def condition(self, prompts: Sequence[str]) -> Any:
        return self._condition(prompts)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        abar = self._abar[t.cpu()].to(x_t.device, x_t.dtype).view(-1, *([1] * (x_t.ndim - 1)))
        sigma = ((1 - abar) / abar).sqrt()
        x = x_t / abar.sqrt()
        return (x - self._denoise(x, sigma.flatten(), cond)) / sigma


def spread_fractions(count: int = DEFAULT_TIMESTEP_COUNT) -> tuple[float, ...]:
    """``count`` fractions evenly spaced from :data:`HIGHEST_FRACTION` down to :data:`LOWEST_FRACTION`
    (one: their midpoint)."""
    if count < 1:
        raise ValueError("probe at least one timestep")
    if count == 1:
        return ((HIGHEST_FRACTION + LOWEST_FRACTION) / 2,)
    step = (HIGHEST_FRACTION - LOWEST_FRACTION) / (count - 1)
    return tuple(round(HIGHEST_FRACTION - k * step, 6) for k in range(count))


def probe_timesteps(num_steps: int, fractions: Sequence[float] = DEFAULT_TIMESTEP_FRACTIONS) -> list[int]:
    """Integer timesteps ``round(f * (T - 1))`` for each fraction ``f`` in (0, 1]."""
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError("timestep fractions must be in (0, 1]")
    return [round(f * (num_steps - 1)) for f in fractions]


def _noise(seeds: Sequence[int], shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """One ``N(0, I)`` sample per seed; ``salt`` separates the start noise from the forward-step noise."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s) * 2 + salt)) for s in seeds])


@torch.no_grad()
def denoiser_drift(
    original: Denoiser,
    edited: Denoiser,
    probes: Sequence[Probe],
    seeds: Sequence[int] = DEFAULT_SEEDS,
    timesteps: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[float]:
    """``D(c)`` (module docstring) per probe, in probe order; one batch of ``len(seeds)`` per call.

    Every original-model evaluation runs first, then every edited-model one: a host that must swap
    weights to switch models (ComfyUI patching a shared model in place) switches once.
    ``progress`` is called ``2 * len(probes)`` times.
    """
    if not seeds:
        raise ValueError("denoiser drift needs at least one seed")
    abar = original.alphas_cumprod.detach().float().cpu()
    steps = list(timesteps) if timesteps is not None else probe_timesteps(abar.shape[0])
    shape = tuple(original.sample_shape)
    start, fresh = _noise(seeds, shape, 0), _noise(seeds, shape, 1)
    n, total = len(seeds), 2 * len(probes)
    t_max = torch.full((n,), abar.shape[0] - 1, dtype=torch.long)
    a_T = abar[-1]
    empty = original.condition([UNCONDITIONAL] * n)
    probed: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = []  # per probe: (x_t, eps_O, eps_O(""))
    signal = []
    for k, probe in enumerate(probes):
        cond = original.condition([probe.prompt] * n)
        x0 = (start - (1 - a_T).sqrt() * original.eps(start, t_max, cond).float().cpu()) / a_T.sqrt()
        x0 = x0.clamp(-DATA_RANGE, DATA_RANGE)
        rows, s = [], 0.0
        for t in steps:
            x_t = abar[t].sqrt() * x0 + (1 - abar[t]).sqrt() * fresh
            tt = torch.full((n,), t, dtype=torch.long)
            e_o = original.eps(x_t, tt, cond).double().cpu()
            e_u = original.eps(x_t, tt, empty).double().cpu()
            s += float((e_o - e_u).flatten(1).norm(dim=1).sum())
            rows.append((x_t, e_o, tt))
        probed.append(rows)
        signal.append(s)
        if progress is not None:
            progress(k + 1, total)
    out = []
    for k, (probe, rows) in enumerate(zip(probes, probed)):
        cond = edited.condition([probe.prompt] * n)
        moved = 0.0
        for x_t, e_o, tt in rows:
            e_e = edited.eps(x_t, tt, cond).double().cpu()
            moved += float((e_e - e_o).flatten(1).norm(dim=1).sum())
        out.append(moved / max(signal[k], EPS))
        if progress is not None:
            progress(len(probes) + k + 1, total)
    return out
