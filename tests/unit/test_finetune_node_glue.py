"""The fine-tune node's glue without ComfyUI: ``comfy_api.latest`` is stubbed (as in test_neighbors_nodes);
a fake ComfyUI BaseModel checks the sigma conversion of ``ComfyDenoiser`` and that training works on weights
created under ``torch.inference_mode()``, as ComfyUI creates them. The real server run is in
``tests/integration/test_finetune_node.py``."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from erasure.concepts import ConceptSet
from erasure.finetune import FinetuneSettings, finetune
from tests import comfy_stub

WIDTH, TOKENS, CHANNELS, SIZE = 8, 3, 4, 32  # SIZE px -> SIZE/8 latent cells


@pytest.fixture
def node_module(monkeypatch):
    comfy_stub.install(monkeypatch)
    yield comfy_stub.fresh_import("nodes.finetune", also=("nodes.care_nodes",))
    comfy_stub.forget("nodes.finetune", "nodes.care_nodes")


class _Net(nn.Module):
    """eps(xc, t, ctx): a conv plus a cross-attention-like read of the context through attn2.to_k."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1)
        self.block = nn.Module()
        self.block.attn2 = nn.Module()
        self.block.attn2.to_k = nn.Linear(WIDTH, CHANNELS, bias=False)

    def forward(self, xc: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        read = self.block.attn2.to_k(context).mean(dim=1)[:, :, None, None]
        return self.conv(xc) * read + 1e-3 * t.float().view(-1, 1, 1, 1)


class _Sampling:
    def __init__(self) -> None:
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
        ab = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - ab) / ab).sqrt()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigmas[t.long()]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma[:, None] - self.sigmas[None]).abs().argmin(dim=1)


class _Base:
    """ComfyUI's EPS BaseModel.apply_model: xc = x / sqrt(1 + sigma^2); denoised = x - eps * sigma."""

    def __init__(self) -> None:
        with torch.inference_mode():
            self.diffusion_model = _Net()
        self.model_sampling = _Sampling()
        self.latent_format = types.SimpleNamespace(latent_channels=CHANNELS)

    def apply_model(self, x, sigma, c_crossattn=None, **kw):  # noqa: ANN001
        s = sigma.view(-1, 1, 1, 1)
        eps = self.diffusion_model(x / (1 + s**2).sqrt(), self.model_sampling.timestep(sigma), c_crossattn)
        return x - eps * s

    def encode_adm(self, **kw):  # noqa: ANN003
        return None


class _Clip:
    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens(self, tokens: str, return_pooled: bool = False):  # noqa: ANN201
        g = torch.Generator().manual_seed(sum(map(ord, tokens)) + 1)
        return torch.randn(1, TOKENS, WIDTH, generator=g), torch.randn(1, WIDTH, generator=g)


def test_schema_has_tooltips(node_module) -> None:
    schema = node_module.CAREFinetuneErase.define_schema()
    assert schema["node_id"] == "CAREFinetuneErase" and schema["description"]
    for item in schema["inputs"] + schema["outputs"]:
        assert item.get("tooltip"), item


def test_denoiser_converts_sigmas_exactly(node_module) -> None:
    base = _Base()
    den = node_module.ComfyDenoiser(types.SimpleNamespace(model=base), _Clip(), SIZE, SIZE, torch.device("cpu"))
    assert den.latent_shape == (CHANNELS, SIZE // 8, SIZE // 8)
    x_t = torch.randn(2, *den.latent_shape, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 700])
    cond = den.concat([den.encode(["boat"]), den.encode(["water"])])
    with torch.no_grad():
        expected = base.diffusion_model(x_t, t, cond["c_crossattn"])  # eps in the engine's convention (eq. 5)
        torch.testing.assert_close(den.eps(x_t, t, cond), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(den.alphas_cumprod, 1 / (1 + base.model_sampling.sigmas**2))


def test_training_works_on_inference_mode_weights_only_through_aliases(node_module) -> None:
    base = _Base()
    den = node_module.ComfyDenoiser(types.SimpleNamespace(model=base), _Clip(), SIZE, SIZE, torch.device("cpu"))
    concepts = ConceptSet.from_text("boat", care="water")
    settings = FinetuneSettings(parameter_set="kv", iterations=2, sample_steps=2, pool_seeds=1, rank=1)
    weights = dict(den.root.named_parameters())
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        finetune(den, concepts, settings)
    with node_module.autograd_usable(den.root) as swapped:
        assert swapped == len(weights)
        result = finetune(den, concepts, settings)
    assert all(p is weights[n] and p.is_inference() for n, p in den.root.named_parameters())  # originals back
    assert set(result.delta.updates) == {"block.attn2.to_k"}
