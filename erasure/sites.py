"""Edit sites: the linear maps of a denoiser that read text-encoder token vectors.

* UNet families (SD1.x, SD2.x, SDXL, the toy world): cross-attention keys and values,
  ``...attn2.to_k`` / ``...attn2.to_v`` (SD1.x: 16 layers x 2 at d=768; SD2.x: d=1024; SDXL: 70 x 2 at d=2048).
* MMDiT families: the projection that first reads the text tokens, SD3 ``context_embedder``
  (d=4096, with bias) and FLUX ``txt_in`` (d=4096, with bias).

Only the weight is edited. An edit ``W -> W'`` whose targets are written on the weight part,
``W' c = W a``, gives ``W' c + b = W a + b``: the bias cancels from every target and preserved output,
so it is carried along unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

# Which state-dict weights are text-reading maps, by family. Keys are regexes on the full key.
SITE_PATTERNS: dict[str, tuple[str, ...]] = {
    "unet_kv": (r"(^|\.)attn2\.to_k\.weight$", r"(^|\.)attn2\.to_v\.weight$"),
    "unet_k": (r"(^|\.)attn2\.to_k\.weight$",),
    "unet_v": (r"(^|\.)attn2\.to_v\.weight$",),
    "mmdit": (r"(^|\.)context_embedder\.weight$", r"(^|\.)txt_in\.weight$"),
}
SITE_SELECTIONS = tuple(SITE_PATTERNS)


class SiteError(ValueError):
    """No usable edit site, or a site that cannot be edited."""


@dataclass(frozen=True)
class EditSite:
    """One linear map ``y = W x (+ b)`` that reads token vectors.

    name:   module path inside the denoiser, without ``.weight``
            (e.g. ``input_blocks.1.1.transformer_blocks.0.attn2.to_k``).
    weight: ``[out, d]``, any floating dtype; never modified by the engine.
    bias:   ``[out]`` or ``None``; never modified (see module docstring).
    """

    name: str
    weight: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


def discover_sites(
    state_dict: Mapping[str, torch.Tensor],
    selection: str = "unet_kv",
    prefix: str = "",
) -> list[EditSite]:
    """Find the text-reading maps in ``state_dict``.

    ``selection`` names a pattern set in :data:`SITE_PATTERNS`; ``"auto"`` tries the UNet keys/values
    first, then the MMDiT projections. ``prefix`` (e.g. ``"diffusion_model."``) is stripped from names.
    Sites are returned sorted by name, so every run edits them in the same order.
    """
    selections = ("unet_kv", "mmdit") if selection == "auto" else (selection,)
    for sel in selections:
        if sel not in SITE_PATTERNS:
            raise SiteError(f"unknown site selection {sel!r}; choose one of {', '.join(SITE_SELECTIONS)} or 'auto'")
        patterns = [re.compile(p) for p in SITE_PATTERNS[sel]]
        sites = []
        for key in sorted(state_dict):
            if not key.startswith(prefix) or not any(p.search(key) for p in patterns):
                continue
            weight = state_dict[key]
            if weight.ndim != 2:
                raise SiteError(f"{key} has shape {tuple(weight.shape)}; an edit site must be a 2-D linear weight")
            name = key[len(prefix) : -len(".weight")]
            sites.append(EditSite(name, weight, state_dict.get(f"{prefix}{name}.bias")))
        if sites:
            return sites
    raise SiteError(
        f"no text-reading linear maps found for selection {selection!r} "
        f"(looked for {', '.join(p for s in selections for p in SITE_PATTERNS[s])}); "
        "is this a supported SD1.x/SD2.x/SDXL/SD3/FLUX denoiser?"
    )


def group_by_width(sites: Iterable[EditSite]) -> dict[int, list[EditSite]]:
    """Sites keyed by input width ``d``: one closed-form system is solved per width."""
    groups: dict[int, list[EditSite]] = {}
    for site in sites:
        groups.setdefault(site.in_features, []).append(site)
    return groups
