"""CARE Fine-tune Erase (ComfyUI V3 node): ESD-style fine-tuning with CARE losses, in-process.

Thin glue around :func:`erasure.finetune.finetune`. :class:`ComfyDenoiser` presents a ComfyUI MODEL as the
engine's ``Denoiser`` through ComfyUI's own ``BaseModel.apply_model`` (SD1.x/SD2.x/SDXL UNets), converting
the engine's variance-preserving convention (eq. 5 of :mod:`erasure.finetune.denoiser`) to ComfyUI's::

    sigma_t = sqrt((1 - abar_t) / abar_t),  x = x_t / sqrt(abar_t) = x_t sqrt(1 + sigma_t^2),
    eps = (x - apply_model(x, sigma_t)) / sigma_t          (apply_model returns the denoised x_0)

ComfyUI runs nodes under ``torch.inference_mode()``; training needs autograd, so the node trains inside
``torch.inference_mode(False)`` and, for the duration of training only, swaps each inference-mode
parameter/buffer of the diffusion model for a zero-copy alias of the same storage that autograd accepts
(restored in ``finally``). Weights already carrying patches (a LoRA loaded before) are used as the sampler
would use them (ComfyUI loads them patched); the trained LoRA is added on a clone (``clone`` +
``add_patches``), so the input MODEL is untouched and earlier patches compose with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from comfy_api.latest import io

from . import adapters
from .care_nodes import CATEGORY, Concepts, Erasure, ErasureResult, _check_interrupt
from .engine import engine_module
from .widgets import image_side, weight

LATENT_DOWNSCALE = 8
"""SD-family VAEs map 8x8 pixels to one latent cell."""
DEFAULT_SIZE = 512
UNET_FAMILIES = ("SD1.x", "SD2.x", "SDXL")


class ComfyDenoiser:
    """A ComfyUI ModelPatcher as an ``erasure.finetune.Denoiser`` (see module docstring)."""

    def __init__(self, model, clip, width: int, height: int, device: torch.device) -> None:
        self.patcher = model
        self.base = model.model
        self.clip = clip
        self._device = device
        channels = int(getattr(self.base.latent_format, "latent_channels", 4))
        self._shape = (channels, height // LATENT_DOWNSCALE, width // LATENT_DOWNSCALE)
        self._size = (width, height)
        sigmas = self.base.model_sampling.sigmas.detach().float().cpu()
        self._alphas_cumprod = 1.0 / (1.0 + sigmas**2)
        self._encoded: dict[str, dict] = {}

    def prewarm(self, prompts: Sequence[str]) -> None:
        """Encode ``prompts`` now (before the UNet is loaded for training: the CLIP may evict it)."""
        for p in prompts:
            self.encode([p])

    @property
    def root(self) -> torch.nn.Module:
        return self.base.diffusion_model

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def x0_clip(self) -> float | None:
        return None

    def encode(self, prompts: Sequence[str]) -> dict:
        if len(prompts) == 1 and prompts[0] in self._encoded:
            return self._encoded[prompts[0]]
        conds, ys = [], []
        for prompt in prompts:
            tokens = self.clip.tokenize(prompt)
            cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
            conds.append(cond.detach().clone())
            w, h = self._size
            y = self.base.encode_adm(
                pooled_output=pooled, width=w, height=h, crop_w=0, crop_h=0, target_width=w, target_height=h,
                prompt_type="positive",
            )
            ys.append(None if y is None else y.detach().clone())
        out = {"c_crossattn": torch.cat(conds), "y": None if ys[0] is None else torch.cat(ys)}
        if len(prompts) == 1:
            self._encoded[prompts[0]] = out
        return out

    def concat(self, conds: Sequence[dict]) -> dict:
        lengths = {c["c_crossattn"].shape[1] for c in conds}
        if len(lengths) > 1:
            raise ValueError("concept prompts encode to different token lengths; keep each under 75 tokens")
        ys = [c["y"] for c in conds]
        return {
            "c_crossattn": torch.cat([c["c_crossattn"] for c in conds]).to(self._device),
            "y": None if ys[0] is None else torch.cat(ys).to(self._device),
        }

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        sigma = self.base.model_sampling.sigma(t).to(x_t.device, torch.float32)
        scale = (1.0 + sigma**2).sqrt().view(-1, *([1] * (x_t.ndim - 1)))
        x = x_t * scale
        extra = {"y": cond["y"]} if cond["y"] is not None else {}
        denoised = self.base.apply_model(x, sigma, c_crossattn=cond["c_crossattn"], **extra)
        return (x - denoised) / sigma.view_as(scale)


@contextlib.contextmanager
def autograd_usable(module: torch.nn.Module) -> Iterator[int]:
    """Swap inference-mode parameters/buffers for zero-copy aliases autograd accepts; restore afterwards.

    Yields the number of tensors swapped. Values are shared, never copied or written.
    """
    swapped: list[tuple[dict, str, torch.Tensor]] = []

    def alias(t: torch.Tensor) -> torch.Tensor:
        a = torch.empty(0, dtype=t.dtype, device=t.device)
        return a.set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())

    try:
        for m in module.modules():
            for store in (m._parameters, m._buffers):
                for name, t in list(store.items()):
                    if t is not None and t.is_inference():
                        new = alias(t.detach())
                        store[name] = torch.nn.Parameter(new, requires_grad=False) if store is m._parameters else new
                        swapped.append((store, name, t))
        yield len(swapped)
    finally:
        for store, name, t in reversed(swapped):
            store[name] = t


class CAREFinetuneErase(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = engine_module("finetune").FinetuneSettings()
        return io.Schema(
            node_id="CAREFinetuneErase",
            display_name="CARE Fine-tune Erase (ESD)",
            category=CATEGORY,
            description=(
                "Erases the target concepts by fine-tuning LoRA adapters on the denoiser with ESD's negative-guidance "
                "loss, regularised by CARE losses that keep the retained/CARE concepts and the context pairs "
                "('a boat on water => water'). Slower than CARE Erase (it trains), but can edit maps beyond the ones "
                "that read text. Returns a patched copy of the MODEL (the input is not changed) and the erasure, "
                "which CARE Save Erasure LoRA saves like a closed-form one. Connect the original MODEL."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The SD1.x/SD2.x/SDXL model to fine-tune (it is not modified)."),
                io.Clip.Input("clip", tooltip="The text encoder loaded with this MODEL."),
                Concepts.Input("concepts", tooltip="Targets to erase; retained/CARE concepts and context pairs to keep."),
                io.Combo.Input(
                    "parameter_set", options=list(engine_module("finetune.adapters").PARAMETER_SETS), default=d.parameter_set,
                    tooltip="Which linear maps get LoRA adapters: 'xattn' cross-attention (ESD-x), 'kv' only the text-"
                    "reading keys/values, 'non_xattn' everything else (ESD-u), 'all' every linear map.",
                ),
                io.Int.Input("rank", default=d.rank, min=1, max=128, tooltip="LoRA rank per adapted map."),
                io.Int.Input("iterations", default=d.iterations, min=1, max=100000, tooltip="Optimiser steps."),
                io.Float.Input("learning_rate", default=d.learning_rate, min=1e-7, max=1.0, step=1e-5,
                               tooltip="Adam learning rate of the adapters."),
                io.Float.Input("eta", default=d.eta, min=0.0, max=20.0, step=0.1,
                               tooltip="ESD negative-guidance scale: how far past the anchor the target is pushed."),
                weight("retain_scale", d.retain_scale, "Weight of the CARE retain loss (0 = plain ESD, no protection)."),
                weight("context_scale", d.context_scale, "Weight of the contextual loss on the concept set's context pairs."),
                io.Int.Input("batch_size", default=d.batch_size, min=1, max=64, tooltip="Samples per loss term per step."),
                io.Int.Input("sample_steps", default=d.sample_steps, min=1, max=200,
                             tooltip="DDIM steps of the partial sampling that makes the noisy latents trained on."),
                io.Int.Input("pool_seeds", default=d.pool_seeds, min=1, max=256, tooltip="Sampled trajectories per prompt."),
                io.Float.Input("guidance", default=d.guidance, min=0.0, max=30.0, step=0.5,
                               tooltip="CFG scale of that partial sampling."),
                image_side("width", DEFAULT_SIZE, "Image width the noisy latents are made at (ignored with a latent input)."),
                image_side("height", DEFAULT_SIZE, "Image height the noisy latents are made at (ignored with a latent input)."),
                io.Int.Input("seed", default=d.seed, min=0, max=2**31 - 1, tooltip="Seed of every random choice."),
                io.Boolean.Input("mixed_precision", default=True, tooltip="Autocast on CUDA (bf16/fp16); no effect on CPU."),
                io.Combo.Input("gradient_checkpointing", options=["auto", "on", "off"], default="auto",
                               tooltip="Recompute transformer blocks in the backward pass to save memory "
                               "('auto': for latents of 64x64 and larger)."),
                io.Latent.Input("latents", optional=True,
                                tooltip="Optional images (as latents) to noise instead of sampling the target prompt."),
                Erasure.Input("warm_start", optional=True,
                              tooltip="Optional CARE Erase result to start from (its change is trained further)."),
            ],
            outputs=[
                io.Model.Output(display_name="model", tooltip="A patched copy of the MODEL with the concepts erased."),
                Erasure.Output(display_name="erasure", tooltip="The trained LoRA and its loss report."),
                io.String.Output(display_name="report", tooltip="Loss terms at the first and last step, timings."),
            ],
        )

    @classmethod
    def execute(
        cls, model, clip, concepts, parameter_set, rank, iterations, learning_rate, eta, retain_scale, context_scale,
        batch_size, sample_steps, pool_seeds, guidance, width, height, seed, mixed_precision, gradient_checkpointing,
        latents=None, warm_start=None,
    ) -> io.NodeOutput:  # fmt: skip
        import comfy.model_management
        import comfy.utils

        ft = engine_module("finetune")
        family = adapters.model_family(model)
        if family.label not in UNET_FAMILIES:
            raise adapters.AdapterError(f"fine-tune erasure supports {', '.join(UNET_FAMILIES)} models, not {family.label}")
        settings = ft.FinetuneSettings(
            parameter_set=parameter_set, rank=rank, iterations=iterations, learning_rate=learning_rate, eta=eta,
            retain_scale=retain_scale, context_scale=context_scale, batch_size=batch_size, sample_steps=sample_steps,
            pool_seeds=pool_seeds, guidance=guidance, seed=seed, mixed_precision=mixed_precision,
            checkpointing=gradient_checkpointing,
        )  # fmt: skip
        device = comfy.model_management.get_torch_device()
        pbar = comfy.utils.ProgressBar(iterations)

        def progress(done: int, total: int) -> None:
            _check_interrupt()
            pbar.update_absolute(done, total)

        with torch.inference_mode(False), torch.enable_grad():
            denoiser = ComfyDenoiser(model, clip, width, height, device)
            denoiser.prewarm(ft.trainer.training_prompts(concepts))
            comfy.model_management.load_models_gpu([model], force_full_load=True)
            clean = None
            if latents is not None:
                clean = model.model.process_latent_in(latents["samples"].clone()).float()
                denoiser._shape = tuple(clean.shape[1:])
            init = warm_start.delta if warm_start is not None else None
            with autograd_usable(denoiser.root):
                result = ft.finetune(denoiser, concepts, settings, latents=clean, init=init, progress=progress)
        result.delta.metadata["model_family"] = family.label
        patched, _ = adapters.patched_clone(model, result.delta.lora_state_dict("comfy"))
        erasure = ErasureResult(result.delta, result, family.label, len(result.delta.updates))
        return io.NodeOutput(patched, erasure, erasure.text())


NODES: list[type[io.ComfyNode]] = [CAREFinetuneErase]
