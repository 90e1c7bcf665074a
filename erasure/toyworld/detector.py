"""A small CNN that says which object (if any) and which background a 32x32 image shows.

Objects are independent yes/no outputs (sigmoid, threshold from the config); the background is one of
six (softmax). Trained on freshly rendered scenes with noise and blur augmentation, because the images
it scores come from a diffusion model and are a little noisier and softer than the renders.

    python -m erasure.toyworld.detector        # train, evaluate on held-out renders, save weights
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .config import DetectorConfig, WorldConfig, from_dict, to_dict
from .io import DETECTOR_FILE, WEIGHTS_DIR, load_meta, load_state, save_weights
from .renderer import render_batch


class Detector(nn.Module):
    """``images [N, 3, H, W]`` in [0, 1] -> logits ``[N, objects + backgrounds]``."""

    def __init__(self, n_objects: int, n_backgrounds: int, cfg: DetectorConfig) -> None:
        super().__init__()
        self.n_objects = n_objects
        layers: list[nn.Module] = []
        prev = 3
        for c in cfg.channels:
            layers += [nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            prev = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(2 * prev, n_objects + n_backgrounds)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.features(images * 2 - 1)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


@dataclass(frozen=True)
class Detections:
    """Per image: which objects are present (bool ``[N, O]``) and the background index ``[N]``."""

    objects: np.ndarray
    background: np.ndarray
    object_probs: np.ndarray
    background_probs: np.ndarray


class ConceptDetector:
    """The trained detector with names: ``has(images, concept)`` works for objects and backgrounds."""

    def __init__(self, net: Detector, world: WorldConfig, threshold: float) -> None:
        self.net = net.eval()
        self.world = world
        self.threshold = threshold

    @torch.no_grad()
    def detect(self, images: torch.Tensor) -> Detections:
        logits = self.net(images.float())
        o = torch.sigmoid(logits[:, : self.net.n_objects])
        b = torch.softmax(logits[:, self.net.n_objects :], dim=1)
        return Detections((o > self.threshold).numpy(), b.argmax(1).numpy(), o.numpy(), b.numpy())

    def present(self, det: Detections, concept: str) -> np.ndarray:
        """Bool ``[N]``: is ``concept`` (an object or a background name) in each image."""
        if concept in self.world.objects:
            return det.objects[:, self.world.objects.index(concept)]
        if concept in self.world.backgrounds:
            return det.background == self.world.backgrounds.index(concept)
        raise KeyError(f"unknown concept {concept!r}; known: {', '.join(self.world.labels)}")


def augment(images: torch.Tensor, gen: torch.Generator, cfg: DetectorConfig) -> torch.Tensor:
    """Random Gaussian noise and (sometimes) a 3x3 box blur; images in [0, 1]."""
    n = images.shape[0]
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    use_blur = (torch.rand(n, 1, 1, 1, generator=gen) < cfg.blur_prob).float()
    images = use_blur * blur + (1 - use_blur) * images
    std = torch.rand(n, 1, 1, 1, generator=gen) * cfg.noise_std_max
    return (images + std * torch.randn(images.shape, generator=gen)).clamp(0, 1)


def _split_labels(labels: torch.Tensor, n_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
    return labels[:, :n_objects], labels[:, n_objects:].argmax(1)


def train_detector(
    world: WorldConfig, cfg: DetectorConfig, progress: bool = True, init: dict[str, torch.Tensor] | None = None
) -> Detector:
    """One-cycle training from scratch, or (``init``) a constant-rate fine-tune of saved weights."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    net = Detector(len(world.objects), len(world.backgrounds), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    if init is not None:
        net.load_state_dict(init)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    n_obj = len(world.objects)
    positive_weight = torch.full((n_obj,), cfg.positive_weight)
    bar = tqdm(range(cfg.steps), disable=not progress, desc="detector train")
    for step in bar:
        images, labels, _ = render_batch(rng, cfg.batch_size, world)
        x = augment(torch.from_numpy(images) * 0.5 + 0.5, gen, cfg)
        y_obj, y_bg = _split_labels(torch.from_numpy(labels), n_obj)
        logits = net(x)
        object_loss = F.binary_cross_entropy_with_logits(logits[:, :n_obj], y_obj, pos_weight=positive_weight)
        loss = object_loss + F.cross_entropy(logits[:, n_obj:], y_bg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return net.eval()


@torch.no_grad()
def evaluate(
    detector: ConceptDetector, n: int, seed: int, augmented: bool, cfg: DetectorConfig
) -> dict[str, dict[str, float]]:
    """Per label on ``n`` held-out renders (objects: present/absent; backgrounds: one-vs-rest):
    ``accuracy``, ``recall`` (share of the images showing the label where it is found: what a
    "concept present" rate needs) and ``specificity`` (share of the others where it is not)."""
    world = detector.world
    images, labels, _ = render_batch(np.random.default_rng(seed), n, world)
    x = torch.from_numpy(images) * 0.5 + 0.5
    if augmented:
        x = augment(x, torch.Generator().manual_seed(seed), cfg)
    det = detector.detect(x)
    out: dict[str, dict[str, float]] = {"accuracy": {}, "recall": {}, "specificity": {}}
    for j, name in enumerate(world.labels):
        truth = labels[:, j] > 0.5
        found = detector.present(det, name)
        out["accuracy"][name] = float((found == truth).mean())
        out["recall"][name] = float(found[truth].mean())
        out["specificity"][name] = float((~found[~truth]).mean())
    return out


def load_detector(path: Path | None = None) -> ConceptDetector:
    path = path or WEIGHTS_DIR / DETECTOR_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; train it with `python -m erasure.toyworld.detector`")
    meta = load_meta(path)
    world = from_dict(WorldConfig, meta["world"])
    cfg = from_dict(DetectorConfig, meta["detector"])
    net = Detector(len(world.objects), len(world.backgrounds), cfg)
    net.load_state_dict(load_state(path))
    return ConceptDetector(net, world, cfg.threshold)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Train and evaluate the toy-world concept detector.")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR / DETECTOR_FILE)
    p.add_argument("--init", type=Path, default=None, help="fine-tune these weights at a constant rate")
    p.add_argument("--steps", type=int, default=DetectorConfig.steps)
    p.add_argument("--lr", type=float, default=DetectorConfig.lr)
    p.add_argument("--seed", type=int, default=DetectorConfig.seed)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = WorldConfig()
    cfg = replace(DetectorConfig(), steps=args.steps, lr=args.lr, seed=args.seed)
    history = []
    init = None
    if args.init is not None:
        init = load_state(args.init)
        prior = load_meta(args.init)
        history = [*prior.get("history", []), {"detector": prior["detector"], "stats": prior["stats"]}]
    start = time.time()
    net = train_detector(world, cfg, init=init)
    seconds = time.time() - start
    det = ConceptDetector(net, world, cfg.threshold)
    clean = evaluate(det, cfg.eval_images, cfg.eval_seed, False, cfg)
    noisy = evaluate(det, cfg.eval_images, cfg.eval_seed + 1, True, cfg)
    stats = {"train_seconds": round(seconds, 1)}
    for measure in clean:
        stats[f"heldout_{measure}"] = clean[measure]
        stats[f"heldout_{measure}_augmented"] = noisy[measure]
    meta = {"world": to_dict(world), "detector": to_dict(cfg), "stats": stats, "history": history}
    save_weights(args.out, net.state_dict(), meta)
    print(f"detector trained in {seconds:.0f} s on {cfg.eval_images} held-out renders (clean / augmented):")
    for measure in clean:
        print(f"  min {measure:12s} {min(clean[measure].values()):.4f} / {min(noisy[measure].values()):.4f}")
    print("  label     recall (clean / augmented)  specificity (clean / augmented)")
    for name in world.labels:
        print(f"  {name:8s} {clean['recall'][name]:.4f} / {noisy['recall'][name]:.4f}   "
              f"{clean['specificity'][name]:.4f} / {noisy['specificity'][name]:.4f}")


if __name__ == "__main__":
    main()
