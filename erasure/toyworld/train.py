"""Train the toy text-to-image model (text encoder + UNet, jointly) on freshly rendered scenes.

    python -m erasure.toyworld.train [--steps N] [--out PATH] [--seed S]

Every batch is rendered on the fly from a seeded generator, so a run is reproducible from its seed and
never sees the same image twice. The EMA weights are saved (safetensors + JSON config sidecar) every
``checkpoint_every`` steps and at the end; a wall-clock guard stops early (and records it) if the
machine is slower than planned.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import ModelConfig, TrainConfig, WorldConfig, from_dict, to_dict
from .io import MODEL_FILE, WEIGHTS_DIR, config_meta, load_meta, load_state, save_weights
from .model import ToyModel
from .renderer import render_batch, vocabulary


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def diffusion_loss(
    model: ToyModel, images: torch.Tensor, captions: list[str], gen: torch.Generator, weight_max: float = 1.0
) -> torch.Tensor:
    """Epsilon-prediction MSE at uniformly drawn timesteps, weighted ``clamp(1 / SNR, 1, weight_max)``."""
    b = images.shape[0]
    t = torch.randint(0, model.cfg.num_train_timesteps, (b,), generator=gen)
    noise = torch.randn(images.shape, generator=gen)
    if model.cfg.noise_offset > 0:
        noise = noise + model.cfg.noise_offset * torch.randn((b, images.shape[1], 1, 1), generator=gen)
    ab = model.alphas_cumprod[t][:, None, None, None]
    x_t = ab.sqrt() * images + (1 - ab).sqrt() * noise
    context, mask = model.condition(captions)
    per_image = (model.unet(x_t, t, context, mask) - noise).pow(2).mean(dim=(1, 2, 3))
    weight = ((1 - ab) / ab).flatten().clamp(1.0, weight_max)
    return (weight * per_image).mean()


@torch.no_grad()
def ema_update(ema: ToyModel, model: ToyModel, decay: float) -> None:
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1.0 - decay)


def train(
    world: WorldConfig,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out: Path | None,
    progress: bool = True,
    init: Path | None = None,
) -> tuple[ToyModel, dict]:
    """Train and return the EMA model and a stats dict; saves to ``out`` if given.

    ``init`` continues from saved weights (a second stage): model and EMA start from them, the optimizer
    and the learning-rate schedule start afresh, and the sidecar records the earlier stages.
    """
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.num_threads)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab = vocabulary(world)
    model = ToyModel(vocab, model_cfg)
    history: list[dict] = []
    if init is not None:
        init_meta = load_meta(init)
        earlier = replace(from_dict(ModelConfig, init_meta["model"]), noise_offset=model_cfg.noise_offset)
        if init_meta["vocab"] != vocab or earlier != model_cfg:  # a later stage may change the noise offset
            raise ValueError(f"{init} was trained with another vocabulary or model config")
        model.load_state_dict(load_state(init))
        history = [*init_meta.get("history", []), {"train": init_meta["train"], "stats": init_meta["stats"]}]
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    meta = config_meta(world, model_cfg, vocab)
    meta["train"] = to_dict(cfg)
    meta["history"] = history
    n_params = sum(p.numel() for p in model.parameters())
    start = time.time()
    losses: list[float] = []
    stopped_early = False
    step = 0
    if init is not None and out is not None and init.resolve() == out.resolve():
        raise ValueError("--init and --out must differ (the checkpoints would overwrite the starting point)")

    def save(done: int, final: bool) -> None:
        if out is None:
            return
        stats = {
            "steps_done": done,
            "seconds": round(time.time() - start, 1),
            "final": final,
            "stopped_early": stopped_early,
            "parameters": n_params,
            "loss_last_100": float(np.mean(losses[-100:])) if losses else None,
            "total_steps_all_stages": done + sum(h["stats"]["steps_done"] for h in history),
        }
        save_weights(out, ema.state_dict(), {**meta, "stats": stats})

    bar = tqdm(range(cfg.steps), disable=not progress, desc="toyworld train")
    for step in bar:
        images, _, captions = render_batch(rng, cfg.batch_size, world)
        captions = ["" if rng.random() < cfg.caption_dropout else c for c in captions]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = diffusion_loss(model, torch.from_numpy(images), captions, gen, cfg.high_noise_weight_max)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0:
            save(step + 1, final=False)
        if cfg.stop_after is not None and step + 1 >= cfg.stop_after:
            break
        if time.time() - start > cfg.max_minutes * 60:
            stopped_early = True
            break
    step += 1
    save(step, final=True)
    return ema, {"steps_done": step, "seconds": time.time() - start, "stopped_early": stopped_early}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes)
    p.add_argument("--threads", type=int, default=TrainConfig.num_threads)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup", type=int, default=TrainConfig.warmup_steps)
    p.add_argument("--high-noise-weight", type=float, default=TrainConfig.high_noise_weight_max)
    p.add_argument("--stop-after", type=int, default=None, help="stop early, keeping the --steps schedule")
    p.add_argument("--caption-dropout", type=float, default=TrainConfig.caption_dropout)
    p.add_argument("--noise-offset", type=float, default=ModelConfig.noise_offset)
    p.add_argument("--init", type=Path, default=None, help="continue from these weights (a second stage)")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / MODEL_FILE)
    args = p.parse_args(argv)
    cfg = replace(
        TrainConfig(),
        steps=args.steps,
        seed=args.seed,
        batch_size=args.batch_size,
        max_minutes=args.max_minutes,
        num_threads=args.threads,
        lr=args.lr,
        warmup_steps=args.warmup,
        high_noise_weight_max=args.high_noise_weight,
        stop_after=args.stop_after,
        caption_dropout=args.caption_dropout,
    )
    model_cfg = replace(ModelConfig(), noise_offset=args.noise_offset)
    _, stats = train(WorldConfig(), model_cfg, cfg, args.out, init=args.init)
    print(f"trained {stats['steps_done']} steps in {stats['seconds']:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
