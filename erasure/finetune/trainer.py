"""ESD-style fine-tuning with CARE regularisation: concept set + denoiser -> LoRA adapters -> Delta.

One iteration (losses in :mod:`erasure.finetune.losses`, adapters in :mod:`erasure.finetune.adapters`):

1. draw ``batch_size`` erase samples (target prompt, its pool latent ``x_t``, ``t``), and as many retained
   and context samples when those terms are on (latents from each prompt's own pool);
2. frozen network (adapters off, no gradient): ``eps(x_t, a)``, ``eps(x_t, c)``, ``eps(x_t, "")`` for
   erase samples, ``eps(x_t, r)`` for retained ones, ``eps(x_t, r)`` at the context's latent for pairs;
3. trained network, one batched forward: ``eps'(x_t, c)``, ``eps'(x_t, r)``, ``eps'(x_t, r')``;
4. ``L = s_e L_erase + s_r L_retain + s_c L_context``; gradients for the adapters only
   (``torch.autograd.grad``: the network's own parameters never receive ``.grad``); Adam step.

Everything random comes from one ``torch.Generator`` seeded with ``settings.seed`` (adapter init, pool
noise seeds, draws), so a run is reproducible on a given device. On CUDA the forward passes run under
autocast (bfloat16 where supported, else float16 with loss scaling) while adapters and optimiser state
stay float32. ``progress(done, total)`` is called after each pool prompt and each iteration and may raise
to interrupt: nothing is returned then, and this module never writes files.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from .. import __version__
from ..concepts import ConceptSet
from ..delta import Delta, metadata_json
from . import losses
from .adapters import PARAMETER_SETS, LoraAdapters, ParameterSet, gradient_checkpointing, select_linear
from .denoiser import Denoiser, LatentPool, PromptCache, noised_pool, sampled_pool

ProgressFn = Callable[[int, int], None]
Checkpointing = Literal["auto", "on", "off"]
CHECKPOINT_AUTO_ELEMENTS = 8192
"""``"auto"`` checkpoints when one latent has at least this many elements (SD1.5 at 512 px: 4x64x64)."""
CHECKPOINT_CLASSES = ("BasicTransformerBlock",)
"""Submodules recomputed in the backward pass (the attention blocks hold most activations)."""
UNCONDITIONAL = ""
SEED_STRIDE = 1_000_003
"""Pool noise seeds are ``seed * SEED_STRIDE + i``: disjoint from the adapter-init stream."""


class FinetuneError(ValueError):
    """Settings or inputs a user must fix."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Knobs of the trainer (equation numbers refer to :mod:`erasure.finetune.losses`).

    parameter_set:  which linear maps get adapters (:data:`PARAMETER_SETS`).
    rank:           LoRA rank per map (warm-started maps add the warm start's rank).
    iterations:     optimiser steps.
    learning_rate:  Adam step size.
    eta:            ESD negative-guidance scale in eq. (1).
    erase_scale / retain_scale / context_scale: ``s_e``, ``s_r``, ``s_c``; 0 switches a term off.
    batch_size:     samples per term per iteration.
    sample_steps:   DDIM steps of the partial-sampling pool; pool_seeds: trajectories per prompt.
    guidance:       CFG scale used to sample the pool.
    latent_draws:   with user latents, noised copies drawn per latent.
    mixed_precision: autocast on CUDA (ignored on CPU).
    checkpointing:  gradient checkpointing of :data:`CHECKPOINT_CLASSES` (``auto``: large latents only).
    """

    parameter_set: ParameterSet = "xattn"
    rank: int = 4
    iterations: int = 100
    learning_rate: float = 1e-4
    eta: float = 1.0
    erase_scale: float = 1.0
    retain_scale: float = 1.0
    context_scale: float = 1.0
    batch_size: int = 2
    sample_steps: int = 10
    pool_seeds: int = 4
    guidance: float = 3.0
    latent_draws: int = 8
    seed: int = 0
    mixed_precision: bool = True
    checkpointing: Checkpointing = "auto"

    def __post_init__(self) -> None:
        if self.parameter_set not in PARAMETER_SETS:
            raise FinetuneError(f"parameter set {self.parameter_set!r} is not one of {', '.join(PARAMETER_SETS)}")
        if self.checkpointing not in ("auto", "on", "off"):
            raise FinetuneError("checkpointing must be 'auto', 'on' or 'off'")
        for name in ("rank", "iterations", "batch_size", "sample_steps", "pool_seeds", "latent_draws"):
            if int(getattr(self, name)) < 1:
                raise FinetuneError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("learning_rate", "eta", "erase_scale", "retain_scale", "context_scale", "guidance"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise FinetuneError(f"{name} must be a finite number >= 0 (got {value})")
        if self.learning_rate == 0 or self.erase_scale == 0:
            raise FinetuneError("learning_rate and erase_scale must be > 0: nothing would be erased")


@dataclass
class FinetuneResult:
    delta: Delta
    history: list[dict[str, float]] = field(default_factory=list)
    stats: dict[str, object] = field(default_factory=dict)

    def summary(self) -> str:
        """Loss terms at the first and last iteration and the run's statistics, as plain text."""
        lines = ["term        first      last"]
        if self.history:
            first, last = self.history[0], self.history[-1]
            lines += [f"{k:<10} {first[k]:9.5f} {last[k]:9.5f}" for k in sorted(first) if k != "iteration"]
        lines += ["", "  ".join(f"{k}={v}" for k, v in sorted(self.stats.items()))]
        return "\n".join(lines)

    # the report interface of :class:`erasure.report.EraseReport`, so nodes/CLIs show either kind
    as_table = summary

    def to_dict(self) -> dict[str, object]:
        return {"history": self.history, "stats": self.stats, "metadata": dict(self.delta.metadata)}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)


@dataclass(frozen=True)
class _Sample:
    student_prompt: str  # prompt the trained network sees
    frozen_prompts: tuple[str, ...]  # prompts of the frozen predictions that build the target
    pool_prompt: str  # whose pool x_t comes from
    weight: float


def _fill(template: str, concept: str) -> str:
    return " ".join(template.replace("{}", concept).split())


def _term_samples(concepts: ConceptSet) -> dict[str, list[_Sample]]:
    """Every sample each loss term may draw, in a fixed order."""
    erase, retain = [], []
    for template in concepts.templates:
        for t in concepts.targets:
            c = _fill(template, t.concept)
            a = _fill(template, t.anchor) if t.anchor else UNCONDITIONAL
            erase.append(_Sample(c, (a, c, UNCONDITIONAL), c, 1.0))
        for r in concepts.retained:
            p = _fill(template, r.concept)
            retain.append(_Sample(p, (p,), p, r.weight))
    first = concepts.templates[0]
    context = [_Sample(p.context, (_fill(first, p.concept),), p.context, p.weight) for p in concepts.context_pairs]
    return {"erase": erase, "retain": retain, "context": context}


def training_prompts(concepts: ConceptSet) -> list[str]:
    """Every prompt :func:`finetune` encodes for ``concepts`` (so a caller can encode them up front)."""
    prompts = [UNCONDITIONAL]
    for v in _term_samples(concepts).values():
        for s in v:
            prompts += [s.student_prompt, *s.frozen_prompts, s.pool_prompt]
    return list(dict.fromkeys(prompts))


def _autocast(device: torch.device, enabled: bool) -> tuple[Callable[[], contextlib.AbstractContextManager], torch.dtype | None]:
    if not (enabled and device.type == "cuda"):
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype)), dtype


def finetune(
    denoiser: Denoiser,
    concepts: ConceptSet,
    settings: FinetuneSettings = FinetuneSettings(),
    latents: torch.Tensor | None = None,
    init: Delta | None = None,
    progress: ProgressFn | None = None,
) -> FinetuneResult:
    """Train LoRA adapters on ``denoiser`` so it erases ``concepts.targets`` and spares the retained set.

    ``latents`` (clean ``[M, *latent_shape]``) replace partial sampling as the source of ``x_t``;
    ``init`` warm-starts from a closed-form edit. The denoiser's tensors are never modified.
    """
    started = time.perf_counter()
    device = denoiser.device
    generator = torch.Generator().manual_seed(settings.seed)
    samples = _term_samples(concepts)
    scales = {"erase": settings.erase_scale, "retain": settings.retain_scale, "context": settings.context_scale}
    active = [k for k in ("erase", "retain", "context") if samples[k] and scales[k] > 0]
    encode = PromptCache(denoiser)
    autocast, amp_dtype = _autocast(device, settings.mixed_precision)

    adapters = LoraAdapters(
        denoiser.root, select_linear(denoiser.root, settings.parameter_set), settings.rank, generator, init
    ).to(device)
    params = list(adapters.parameters())

    pool_prompts = list(dict.fromkeys(s.pool_prompt for k in active for s in samples[k]))
    total = (len(pool_prompts) if latents is None else 0) + settings.iterations
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    if latents is None:
        seeds = [settings.seed * SEED_STRIDE + i for i in range(settings.pool_seeds)]
        pool = sampled_pool(denoiser, pool_prompts, seeds, settings.sample_steps, settings.guidance, encode, step, autocast)
    else:
        pool = noised_pool(denoiser, pool_prompts, latents, settings.latent_draws, generator)
    pooled_at = time.perf_counter()

    optimizer = torch.optim.Adam(params, lr=settings.learning_rate)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    big = int(torch.Size(denoiser.latent_shape).numel()) >= CHECKPOINT_AUTO_ELEMENTS
    use_ckpt = settings.checkpointing == "on" or (settings.checkpointing == "auto" and big)
    history: list[dict[str, float]] = []
    with adapters.attached(denoiser.root), _maybe(use_ckpt, denoiser.root) as n_ckpt:
        for it in range(settings.iterations):
            drawn = {k: _draw(samples[k], settings.batch_size, pool, generator) for k in active}
            terms = _loss_terms(denoiser, adapters, drawn, encode, settings.eta, autocast, device)
            loss = losses.total_loss(terms, scales)
            grads = torch.autograd.grad(scaler.scale(loss) if scaler else loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"iteration": float(it + 1), "total": float(loss.detach())} | {k: float(v.detach()) for k, v in terms.items()})
            step()
    finished = time.perf_counter()

    metadata = {
        "version": __version__,
        "method": "finetune_esd_care" if len(active) > 1 else "finetune_esd",
        "concepts": concepts.to_json(),
        "targets": metadata_json([t.concept for t in concepts.targets]),
        "anchors": metadata_json([t.anchor for t in concepts.targets]),
        "retained": metadata_json([r.concept for r in concepts.retained]),
        "settings": metadata_json(asdict(settings)),
        "warm_start": "closed_form" if init is not None else "none",
    }
    stats = {
        "adapted_maps": len(adapters.names),
        "rank": max((int(u.shape[1]) for u in adapters.ups), default=0),
        "trainable_params": sum(p.numel() for p in params),
        "terms": "+".join(active),
        "pool_s": round(pooled_at - started, 3),
        "train_s": round(finished - pooled_at, 3),
        "s_per_iteration": round((finished - pooled_at) / settings.iterations, 4),
        "device": str(device),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "checkpointed_modules": n_ckpt,
    }
    return FinetuneResult(adapters.delta(metadata), history, stats)


@contextlib.contextmanager
def _maybe(enabled: bool, root: torch.nn.Module) -> Iterator[int]:
    if not enabled:
        yield 0
        return
    with gradient_checkpointing(root, CHECKPOINT_CLASSES) as n:
        yield n


def _draw(
    samples: Sequence[_Sample], n: int, pool: LatentPool, generator: torch.Generator
) -> list[tuple[_Sample, torch.Tensor, int]]:
    picks = torch.randint(len(samples), (n,), generator=generator).tolist()
    return [(samples[i], *pool.draw(samples[i].pool_prompt, generator)) for i in picks]


def _loss_terms(
    denoiser: Denoiser,
    adapters: LoraAdapters,
    drawn: dict[str, list[tuple[_Sample, torch.Tensor, int]]],
    encode: PromptCache,
    eta: float,
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Eqs. (1)-(3) for one drawn batch: frozen predictions first (no grad), then one trained forward."""
    xs = {k: torch.stack([x for _, x, _ in v]).to(device) for k, v in drawn.items()}
    ts = {k: torch.tensor([t for _, _, t in v], dtype=torch.long, device=device) for k, v in drawn.items()}
    frozen: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad(), adapters.disabled(), autocast():
        for k, v in drawn.items():
            # one row per distinct (sample, prompt): an empty anchor shares the unconditional prediction
            rows: dict[tuple[int, str], int] = {}
            for j, (s, _, _) in enumerate(v):
                for p in s.frozen_prompts:
                    rows.setdefault((j, p), len(rows))
            pick = torch.tensor([j for j, _ in rows], device=device)
            out = denoiser.eps(xs[k][pick], ts[k][pick], encode([p for _, p in rows])).float()
            n_frozen = len(v[0][0].frozen_prompts)
            frozen[k] = [
                out[torch.tensor([rows[(j, s.frozen_prompts[m])] for j, (s, _, _) in enumerate(v)], device=device)]
                for m in range(n_frozen)
            ]
    order = list(drawn)
    with autocast():
        student = denoiser.eps(
            torch.cat([xs[k] for k in order]),
            torch.cat([ts[k] for k in order]),
            encode([s.student_prompt for k in order for s, _, _ in drawn[k]]),
        )
    pieces = dict(zip(order, student.split([len(drawn[k]) for k in order])))
    terms: dict[str, torch.Tensor] = {}
    for k in order:
        w = torch.tensor([s.weight for s, _, _ in drawn[k]], device=device)
        if k == "erase":
            anchor, target, uncond = frozen[k]
            terms[k] = losses.erase_loss(pieces[k], anchor, target, uncond, eta, w)
        else:
            terms[k] = losses.retain_loss(pieces[k], frozen[k][0], w)
    return terms


EVAL_SEED_OFFSET = 7919
"""Evaluation draws use ``settings.seed + EVAL_SEED_OFFSET``: the same batch for every delta compared."""


def evaluate_losses(
    denoiser: Denoiser,
    concepts: ConceptSet,
    settings: FinetuneSettings,
    delta: Delta | None = None,
    latents: torch.Tensor | None = None,
    draws: int = 8,
) -> dict[str, float]:
    """Eqs. (1)-(3) of ``denoiser + delta`` (unweighted by the scales) on one fixed, seeded batch of
    ``draws`` samples per term; ``delta=None`` measures the untouched network. No gradient, nothing kept."""
    generator = torch.Generator().manual_seed(settings.seed + EVAL_SEED_OFFSET)
    samples = {k: v for k, v in _term_samples(concepts).items() if v}
    encode = PromptCache(denoiser)
    autocast, _ = _autocast(denoiser.device, settings.mixed_precision)
    prompts = list(dict.fromkeys(s.pool_prompt for v in samples.values() for s in v))
    if latents is None:
        seeds = [(settings.seed + EVAL_SEED_OFFSET) * SEED_STRIDE + i for i in range(settings.pool_seeds)]
        pool = sampled_pool(denoiser, prompts, seeds, settings.sample_steps, settings.guidance, encode, None, autocast)
    else:
        pool = noised_pool(denoiser, prompts, latents, settings.latent_draws, generator)
    adapters = LoraAdapters(denoiser.root, list((delta.updates if delta else {}) or select_linear(denoiser.root, "kv")),
                            1, generator, delta).to(denoiser.device)
    drawn = {k: _draw(v, draws, pool, generator) for k, v in samples.items()}
    with torch.no_grad(), adapters.attached(denoiser.root):
        if delta is None:
            with adapters.disabled():
                terms = _loss_terms(denoiser, adapters, drawn, encode, settings.eta, autocast, denoiser.device)
        else:
            terms = _loss_terms(denoiser, adapters, drawn, encode, settings.eta, autocast, denoiser.device)
    return {k: float(v) for k, v in terms.items()}
