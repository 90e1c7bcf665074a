"""The recipe of the committed toy model: six training stages, each continuing from the previous one.

    python -m erasure.toyworld.recipe [--out erasure/toyworld/weights/toy_model.safetensors]

Each stage starts from the previous one's EMA weights (``--init``) with a fresh optimizer; the sidecar
JSON keeps every stage's config and stats under ``history``. The recipe grew while watching the model:
stage 3 up-weights the noisiest steps because the model ignored captions, stage 5 adds offset noise
because backgrounds followed the seed instead of the caption, stage 6 is the long run at batch 32 with
more caption dropout (see ``docs/toyworld.md``). Stages 1-5 ran single-threaded on a CPU shared with
other jobs (61 minutes there; an estimated 14 minutes alone, from 0.21-0.45 s per step measured quiet),
stage 6 on both cores of an otherwise quiet machine (7,085 steps in 52 minutes, cut by the time guard).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ModelConfig, TrainConfig, WorldConfig
from .io import MODEL_FILE, WEIGHTS_DIR
from .train import train


@dataclass(frozen=True)
class Stage:
    seed: int
    steps: int  # length of the learning-rate schedule
    stop_after: int | None  # where the stage was cut (a checkpoint), None = ran to the end
    batch_size: int
    lr: float
    warmup_steps: int
    high_noise_weight_max: float = 1.0
    noise_offset: float = 0.0
    caption_dropout: float = TrainConfig.caption_dropout
    threads: int = 1  # torch CPU threads the stage ran with (results differ in the last bits between counts)


STAGES: tuple[Stage, ...] = (
    Stage(seed=0, steps=2500, stop_after=750, batch_size=48, lr=1e-3, warmup_steps=200),
    Stage(seed=1, steps=3600, stop_after=500, batch_size=24, lr=1e-3, warmup_steps=50),
    Stage(seed=2, steps=2400, stop_after=250, batch_size=24, lr=1e-3, warmup_steps=50, high_noise_weight_max=5.0),
    Stage(seed=3, steps=1800, stop_after=500, batch_size=24, lr=1e-3, warmup_steps=50, high_noise_weight_max=25.0),
    Stage(seed=4, steps=1000, stop_after=None, batch_size=24, lr=7e-4, warmup_steps=30, high_noise_weight_max=25.0,
          noise_offset=0.1),
    Stage(seed=5, steps=9000, stop_after=7085, batch_size=32, lr=5e-4, warmup_steps=100,
          high_noise_weight_max=25.0, noise_offset=0.1, caption_dropout=0.15, threads=2),
)


def run(out: Path, work: Path) -> None:
    init = None
    for i, st in enumerate(STAGES):
        target = out if i == len(STAGES) - 1 else work / f"stage{i + 1}.safetensors"
        cfg = replace(
            TrainConfig(), seed=st.seed, steps=st.steps, stop_after=st.stop_after, batch_size=st.batch_size,
            lr=st.lr, warmup_steps=st.warmup_steps, high_noise_weight_max=st.high_noise_weight_max,
            caption_dropout=st.caption_dropout, num_threads=st.threads, max_minutes=float("inf"),
        )
        train(WorldConfig(), replace(ModelConfig(), noise_offset=st.noise_offset), cfg, target, init=init)
        init = target


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Re-run the training stages of the committed toy model.")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / MODEL_FILE)
    p.add_argument("--work", type=Path, default=Path(".cache/toyworld_stages"))
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    run(args.out, args.work)


if __name__ == "__main__":
    main()
