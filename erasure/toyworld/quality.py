"""Is the toy model good? Per-concept generation rates and co-occurrence statistics, scored by the detector.

    python -m erasure.toyworld.quality [--seeds 48] [--unconditional 2000] [--threads 2]

Writes ``benchmarks/results/toyworld_quality.json`` and a sample grid PNG. The claims checked:

* every single-concept prompt ("a boat", "water") shows its concept in >= ``MIN_CONCEPT_RATE`` of samples;
* P(home background | object) in unconditional samples (no guidance: the model's own distribution)
  matches the config within ``MAX_COOCCURRENCE_GAP``. Two kinds of unconditional sample are scored:
  the empty prompt (the classifier-free-guidance branch, trained on the dropped captions only), and
  ancestral samples of the joint -- captions drawn from the training distribution, each sampled without
  guidance (:func:`training_captions`).

P(home | object) is also reported for the object-only prompts ("a boat" -> water), for information:
they are sampled with guidance, which sharpens the learned prior towards the home background.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..grid import GridRow, make_grid
from .config import BACKGROUND_ALONE, SamplerConfig, WorldConfig
from .detector import ConceptDetector, load_detector
from .io import MODEL_FILE, WEIGHTS_DIR, load_meta, load_model
from .model import ToyModel
from .renderer import object_phrase, sample_scene
from .sampler import UNCONDITIONAL, sample

MIN_CONCEPT_RATE = 0.90
MAX_COOCCURRENCE_GAP = 0.05
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
GRID_SAMPLES = 8
GRID_CELL = 64  # px per 32 px sample
QUALITY_SEED_BASE = 10_000
UNCONDITIONAL_KEY = "<unconditional>"
MARGINAL_KEY = "<training captions>"
MARGINAL_CAPTION_SEED = 4242


def single_concept_prompts(world: WorldConfig) -> list[tuple[str, str]]:
    """(prompt, concept) for every object ("a boat") and every background ("water")."""
    return [(object_phrase(o, None), o) for o in world.objects] + [(BACKGROUND_ALONE[b], b) for b in world.backgrounds]


def sample_quality_images(
    model: ToyModel, world: WorldConfig, n_seeds: int, n_uncond: int, sampler: SamplerConfig
) -> dict[str, torch.Tensor]:
    """Every image the checks score: each single-concept prompt over ``n_seeds`` seeds; ``n_uncond``
    samples of the empty prompt (no guidance) under :data:`UNCONDITIONAL_KEY`; and ``n_uncond`` samples of
    captions drawn from the training distribution (no guidance) under :data:`MARGINAL_KEY`."""
    seeds = [QUALITY_SEED_BASE + i for i in range(n_seeds)]
    images = {prompt: sample(model, [prompt] * n_seeds, seeds, sampler) for prompt, _ in single_concept_prompts(world)}
    unguided = replace(sampler, guidance_scale=1.0)
    useeds = [QUALITY_SEED_BASE + n_seeds + i for i in range(n_uncond)]
    images[UNCONDITIONAL_KEY] = sample(model, [UNCONDITIONAL] * n_uncond, useeds, unguided)
    mseeds = [QUALITY_SEED_BASE + n_seeds + n_uncond + i for i in range(n_uncond)]
    images[MARGINAL_KEY] = sample(model, training_captions(world, n_uncond), mseeds, unguided)
    return images


def training_captions(world: WorldConfig, n: int, seed: int = MARGINAL_CAPTION_SEED) -> list[str]:
    """``n`` captions drawn as training draws them (before caption dropout). Sampling each without guidance
    is ancestral sampling of the model's joint distribution of scenes: caption ~ p(caption), image ~
    p(image | caption); where a caption names only the object, the model chooses the background."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, world).caption for _ in range(n)]


def cooccurrence(images: torch.Tensor, detector: ConceptDetector) -> dict:
    """Share of ``images`` per detected object and P(home background | object) against the config, with
    the binomial standard error of the config's probability at that many detections."""
    world, det = detector.world, detector.detect(images)
    rows: dict[str, dict] = {}
    for obj in world.objects:
        has = detector.present(det, obj)
        row: dict = {"count": int(has.sum()), "share": float(has.mean())}
        if obj in world.home_background and has.sum() > 0:
            home, p = world.home_background[obj]
            got = float(detector.present(det, home)[has].mean())
            se = float(np.sqrt(p * (1 - p) / has.sum()))
            row.update(home=home, config=p, generated=got, gap=abs(got - p), standard_error=se,
                       within_gap=abs(got - p) <= MAX_COOCCURRENCE_GAP)
        rows[obj] = row
    gaps = [v["gap"] for v in rows.values() if "gap" in v]
    return {
        "per_object": rows,
        "max_gap": max(gaps, default=None),
        "all_within_gap": all(v["within_gap"] for v in rows.values() if "gap" in v),
        "object_share": float(det.objects.any(axis=1).mean()),
        "background_share": {b: float(detector.present(det, b).mean()) for b in world.backgrounds},
    }


def score_quality(images: dict[str, torch.Tensor], detector: ConceptDetector) -> dict:
    """The checks of the module docstring on images from :func:`sample_quality_images`."""
    world = detector.world
    single: dict[str, dict] = {}
    cooc_prompt: dict[str, dict] = {}
    for prompt, concept in single_concept_prompts(world):
        det = detector.detect(images[prompt])
        rate = float(detector.present(det, concept).mean())
        single[prompt] = {"concept": concept, "rate": rate, "pass": rate >= MIN_CONCEPT_RATE}
        if concept in world.home_background:
            home, p = world.home_background[concept]
            got = float(detector.present(det, home).mean())
            cooc_prompt[concept] = {"home": home, "config": p, "generated": got, "gap": abs(got - p)}
    unguided = {key: cooccurrence(images[key], detector) for key in (UNCONDITIONAL_KEY, MARGINAL_KEY) if key in images}
    return {
        "single_concept": single,
        "single_concept_min_rate": min(v["rate"] for v in single.values()),
        "single_concept_all_pass": all(v["pass"] for v in single.values()),
        "cooccurrence_object_prompts": cooc_prompt,
        "cooccurrence_object_prompts_max_gap": max(v["gap"] for v in cooc_prompt.values()),
        "cooccurrence_empty_prompt": unguided.get(UNCONDITIONAL_KEY),
        "cooccurrence_training_captions": unguided.get(MARGINAL_KEY),
        "config_object_share": 1.0 - world.empty_scene_prob,
        "thresholds": {"min_concept_rate": MIN_CONCEPT_RATE, "max_cooccurrence_gap": MAX_COOCCURRENCE_GAP},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Score the committed toy model with the committed detector.")
    p.add_argument("--seeds", type=int, default=48)
    p.add_argument("--unconditional", type=int, default=2000, help="about 140 detections per object: P(home | object) to +-0.03")
    p.add_argument("--steps", type=int, default=SamplerConfig.steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=Path, default=None,
                   help="sample only and save the images here (torch .pt); score later with --score-images")
    p.add_argument("--score-images", type=Path, default=None, help="score images saved by --images")
    p.add_argument("--model", type=Path, default=WEIGHTS_DIR / MODEL_FILE, help="toy-model weights to score")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    sampler = replace(SamplerConfig(), steps=args.steps)
    model, world = load_model(args.model)
    if args.score_images is not None:
        saved = torch.load(args.score_images)
        images, meta = saved["images"], saved["meta"]
    else:
        images = sample_quality_images(model, world, args.seeds, args.unconditional, sampler)
        meta = {"seeds_per_prompt": args.seeds, "unconditional_samples": args.unconditional,
                "sampler": asdict(sampler), "sample_seconds": round(time.time() - start, 1),
                "model_stats": load_meta(args.model)["stats"]}
        if args.images is not None:
            torch.save({"images": images, "meta": meta}, args.images)
            print(f"saved {sum(len(v) for v in images.values())} images to {args.images}")
            return
    result = {**score_quality(images, load_detector()), **meta}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toyworld_quality.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    prompts = list(images)
    rows = [GridRow(prompt, "sample") for prompt in prompts]
    seeds = [f"#{k + 1}" for k in range(GRID_SAMPLES)]
    cells = [list(images[prompt][:GRID_SAMPLES]) for prompt in prompts]
    make_grid(cells, rows, seeds, title="toy model samples", cell=GRID_CELL).save(args.out / "toyworld_samples.png")
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))
    for prompt, row in result["single_concept"].items():
        print(f"  {prompt:14s} {row['concept']:8s} {row['rate']:.3f}")
    empty, marginal = result["cooccurrence_empty_prompt"], result["cooccurrence_training_captions"]
    print(f"object share: config {result['config_object_share']:.2f}, empty prompt {empty['object_share']:.3f}, "
          f"training captions {marginal['object_share']:.3f}")
    print("P(home | object): config / guided object prompt / empty prompt (n) / training captions (n)")
    for obj, row in result["cooccurrence_object_prompts"].items():
        e, m = empty["per_object"][obj], marginal["per_object"][obj]
        print(f"  {obj:8s} {row['home']:6s} {row['config']:.2f} / {row['generated']:.3f} / "
              f"{e.get('generated', float('nan')):.3f} ({e['count']}) / {m.get('generated', float('nan')):.3f} ({m['count']})")


if __name__ == "__main__":
    main()
