"""Paired-image fidelity: the original and the edited model's images for the same prompt and seed.

* SSIM -- structural similarity (Wang et al. 2004), scikit-image's implementation, per channel with
  ``data_range = 1``; 1 means identical.
* PSNR -- ``10 log10(1 / MSE)`` dB for images in ``[0, 1]``; identical images have infinite PSNR, which is
  reported as :data:`PSNR_IDENTICAL_DB` so reports stay valid JSON.

Images are anything :func:`erasure.grid.to_uint8_hwc` accepts; they are compared as float ``[0, 1]`` HWC.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ..grid import to_uint8_hwc

PSNR_IDENTICAL_DB = 100.0
"""PSNR reported for identical images (MSE = 0); above what 8-bit images can otherwise reach (~48 dB)."""
SSIM_MIN_SIDE = 7  # scikit-image's default window; smaller images use the largest odd window that fits


def _float(image: torch.Tensor | np.ndarray) -> np.ndarray:
    return to_uint8_hwc(image).astype(np.float64) / 255.0


def ssim(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    x, y = _float(a), _float(b)
    if x.shape != y.shape:
        raise ValueError(f"paired images differ in shape: {x.shape} vs {y.shape}")
    side = min(x.shape[:2])
    win = SSIM_MIN_SIDE if side >= SSIM_MIN_SIDE else side - (1 - side % 2)
    return float(structural_similarity(x, y, channel_axis=-1, data_range=1.0, win_size=max(win, 1)))


def psnr(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    x, y = _float(a), _float(b)
    if x.shape != y.shape:
        raise ValueError(f"paired images differ in shape: {x.shape} vs {y.shape}")
    if np.array_equal(x, y):
        return PSNR_IDENTICAL_DB
    return float(min(peak_signal_noise_ratio(x, y, data_range=1.0), PSNR_IDENTICAL_DB))


def paired_fidelity(
    originals: Sequence[torch.Tensor | np.ndarray], edited: Sequence[torch.Tensor | np.ndarray]
) -> tuple[float, float]:
    """Mean SSIM and mean PSNR over image pairs ``(originals[i], edited[i])``."""
    if len(originals) != len(edited) or not originals:
        raise ValueError(f"need the same positive number of original and edited images ({len(originals)} vs {len(edited)})")
    pairs = list(zip(originals, edited))
    return float(np.mean([ssim(a, b) for a, b in pairs])), float(np.mean([psnr(a, b) for a, b in pairs]))
