"""Paired-image fidelity: the original and the edited model's images for the same prompt and seed.

* SSIM -- structural similarity (Wang et al. 2004, eq. 13) with scikit-image's default recipe: a 7x7
  uniform window, sample covariances (``N / (N - 1)``), ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with
  ``L = 1``, the map averaged over the positions where the window fits and over channels; 1 means
  identical. Written in torch so the ComfyUI environment needs no scikit-image (the unit tests check it
  against scikit-image).
* PSNR -- ``10 log10(1 / MSE)`` dB for images in ``[0, 1]``; identical images have infinite PSNR, which is
  reported as :data:`PSNR_IDENTICAL_DB` so reports stay valid JSON.

Images are anything :func:`erasure.grid.to_uint8_hwc` accepts; they are compared as float ``[0, 1]`` HWC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..grid import to_uint8_hwc

PSNR_IDENTICAL_DB = 100.0
"""PSNR reported for identical images (MSE = 0); above what 8-bit images can otherwise reach (~48 dB)."""
SSIM_WINDOW = 7  # scikit-image's default window; smaller images use the largest odd window that fits
SSIM_K1, SSIM_K2 = 0.01, 0.03  # Wang et al. 2004 constants
DATA_RANGE = 1.0


def _float(image: torch.Tensor | np.ndarray) -> np.ndarray:
    return to_uint8_hwc(image).astype(np.float64) / 255.0


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    x, y = _float(a), _float(b)
    if x.shape != y.shape:
        raise ValueError(f"paired images differ in shape: {x.shape} vs {y.shape}")
    side = min(x.shape[:2])
    win = max(1, SSIM_WINDOW if side >= SSIM_WINDOW else side - (1 - side % 2))
    tx = torch.from_numpy(x).permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    ty = torch.from_numpy(y).permute(2, 0, 1)[:, None]

    def mean(t: torch.Tensor) -> torch.Tensor:  # window means where the window fits (no padding)
        return F.avg_pool2d(t, win, stride=1)

    n = win * win
    cov_norm = n / (n - 1) if n > 1 else 1.0
    ux, uy = mean(tx), mean(ty)
    vx = cov_norm * (mean(tx * tx) - ux * ux)
    vy = cov_norm * (mean(ty * ty) - uy * uy)
    vxy = cov_norm * (mean(tx * ty) - ux * uy)
    c1, c2 = (SSIM_K1 * DATA_RANGE) ** 2, (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return float(s.mean())


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    x, y = _float(a), _float(b)
    if x.shape != y.shape:
        raise ValueError(f"paired images differ in shape: {x.shape} vs {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return PSNR_IDENTICAL_DB
    return float(min(10.0 * np.log10(DATA_RANGE**2 / mse), PSNR_IDENTICAL_DB))


def paired_fidelity(
    originals: Sequence[torch.Tensor | np.ndarray], edited: Sequence[torch.Tensor | np.ndarray]
) -> tuple[float, float]:
    """Mean SSIM and mean PSNR over image pairs ``(originals[i], edited[i])``."""
    if len(originals) != len(edited) or not originals:
        raise ValueError(
            f"need the same positive number of original and edited images ({len(originals)} vs {len(edited)})"
        )
    pairs = list(zip(originals, edited))
    return float(np.mean([ssim(a, b) for a, b in pairs])), float(np.mean([psnr(a, b) for a, b in pairs]))
