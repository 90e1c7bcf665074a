"""Edit-site discovery by family, grouping by width, and the bias rule of MMDiT projections."""

from __future__ import annotations

import pytest
import torch

from erasure.concepts import ConceptSet
from erasure.erase import EraseSettings, erase
from erasure.sites import SiteError, discover_sites, group_by_width
from tests.fakes import WordHashEncoder, random_sites


def sd15_like_state_dict() -> dict[str, torch.Tensor]:
    """The 16 cross-attention blocks of SD1.5 (ldm names), shrunk along the output axis."""
    sd = {}
    blocks = [f"input_blocks.{i}.1" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block.1"]
    blocks += [f"output_blocks.{i}.1" for i in range(3, 12)]
    for b in blocks:
        for proj in ("to_q", "to_k", "to_v"):
            width = 8 if proj == "to_q" else 768
            sd[f"diffusion_model.{b}.transformer_blocks.0.attn2.{proj}.weight"] = torch.zeros(4, width)
            sd[f"diffusion_model.{b}.transformer_blocks.0.attn1.{proj}.weight"] = torch.zeros(4, 8)
    return sd


def test_sd15_sites() -> None:
    sites = discover_sites(sd15_like_state_dict(), prefix="diffusion_model.")
    assert len(sites) == 32
    assert sites[0].name.startswith("input_blocks.1.1.") and sites[0].name.endswith("attn2.to_k")
    assert set(group_by_width(sites)) == {768}
    assert len(discover_sites(sd15_like_state_dict(), "unet_v", prefix="diffusion_model.")) == 16


def test_mmdit_sites_with_bias_keep_bias_and_hit_anchor_through_it() -> None:
    g = torch.Generator().manual_seed(0)
    sd = {"txt_in.weight": torch.randn(16, 32, generator=g) / 6, "txt_in.bias": torch.randn(16, generator=g),
          "img_in.weight": torch.randn(16, 8, generator=g)}
    sites = discover_sites(sd, "auto")
    assert [s.name for s in sites] == ["txt_in"] and sites[0].bias is not None
    enc = WordHashEncoder()
    r = erase(sites, enc, ConceptSet.from_text("boat -> ship"), EraseSettings(lam=1e-6, token_scope="concept"))
    new_w = r.delta.apply({"txt_in": sd["txt_in.weight"]})["txt_in"]
    boat, ship = (enc.encode([w], [w])[0].vectors[1] for w in ("boat", "ship"))
    b = sd["txt_in.bias"]
    # With the bias included, the erased target reads as the anchor: W' c + b == W a + b.
    assert torch.allclose(new_w @ boat + b, sd["txt_in.weight"] @ ship + b, atol=1e-3)


def test_unsupported_model_is_explained() -> None:
    with pytest.raises(SiteError, match="supported SD1.x"):
        discover_sites({"conv.weight": torch.zeros(3, 3, 1, 1)})
    with pytest.raises(SiteError, match="unknown site selection"):
        discover_sites({}, "everything")


def test_encoder_width_mismatch_is_explained() -> None:
    with pytest.raises(SiteError, match="does not belong to this model"):
        erase(random_sites(width=32), WordHashEncoder(width=16), ConceptSet.from_text("boat"))
