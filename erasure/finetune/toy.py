"""The toy world's :class:`erasure.toyworld.model.ToyModel` as a fine-tuning :class:`Denoiser`.

The UNet predicts noise on ``[3, 32, 32]`` images in ``[-1, 1]`` (the toy sampler clamps DDIM's ``x_0``
there, and so does the pool); conditioning is the encoder's ``(vectors, mask)`` pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..toyworld.model import ToyModel

PIXEL_RANGE = 1.0
TOY_IMAGE_SIZE = 32


class ToyDenoiser:
    def __init__(self, model: ToyModel, device: torch.device | str = "cpu") -> None:
        self.model = model
        self._device = torch.device(device)

    @property
    def root(self) -> nn.Module:
        return self.model.unet

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (3, TOY_IMAGE_SIZE, TOY_IMAGE_SIZE)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.alphas_cumprod.detach().float().cpu()

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def x0_clip(self) -> float | None:
        return PIXEL_RANGE

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.model.tokenizer.batch(list(prompts))
        vectors = self.model.text(ids.to(self._device))
        return vectors.detach(), mask.to(self._device)

    def concat(self, conds: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([c[0] for c in conds]), torch.cat([c[1] for c in conds])

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return self.model.unet(x_t, t, cond[0], cond[1])
