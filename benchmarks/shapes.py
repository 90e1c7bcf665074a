"""Edit-site shapes of real models, for benchmarks on random weights (no downloads)."""

from __future__ import annotations

import torch

from erasure.sites import EditSite

# Output widths of the cross-attention layers, in UNet order; each layer has to_k and to_v.
SD15_LAYERS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320]
SDXL_LAYERS = [640] * 4 + [1280] * 20 + [1280] * 10 + [1280] * 30 + [640] * 6
MODEL_SHAPES: dict[str, tuple[int, list[int]]] = {
    # name: (text width d, output width of every site)
    "sd15": (768, [o for o in SD15_LAYERS for _ in "kv"]),
    "sdxl": (2048, [o for o in SDXL_LAYERS for _ in "kv"]),
    "flux": (4096, [3072]),  # txt_in
}


def random_model_sites(model: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> list[EditSite]:
    """Random weights at the model's real site shapes, scaled like a trained linear layer (1/sqrt(d))."""
    width, outs = MODEL_SHAPES[model]
    g = torch.Generator().manual_seed(seed)
    return [
        EditSite(f"layer{i // 2}.attn2.to_{'kv'[i % 2]}", (torch.randn(o, width, generator=g) / width**0.5).to(dtype))
        for i, o in enumerate(outs)
    ]
