"""Is the toy model good? Per-concept generation rates and co-occurrence statistics, scored by the detector.

    python -m erasure.toyworld.quality [--seeds 48] [--unconditional 2000] [--threads 2]

Writes ``benchmarks/results/toyworld_quality.json`` and a sample grid PNG. The claims checked:

* every single-concept prompt ("a boat", "water") shows its concept in >= ``MIN_CONCEPT_RATE`` of samples;
* P(home background | object) in unconditional samples (no guidance: the model's own distribution)
  matches the config within ``MAX_COOCCURRENCE_GAP``. Two kinds of unconditional sample are scored:
  the empty prompt (the classifier-free-guidance branch, trained on the dropped captions only), and
  ancestral samples of the joint -- captions drawn from the training distribution, each sampled without
  guidance (:func:`training_captions`).

P(home | object) is also reported, for information, where guidance is used: for the object-only prompts
("a boat" -> water, at the product's guidance), and for the same training-caption captions and seeds
sampled at each ``--marginal-guidance`` scale. Guidance sharpens the learned prior towards the home
background, so the sweep shows how far the unguided model's conditional is from the config's, in units
of guidance: it answers "how under-confident is the unguided model", not the check above.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..grid import GridRow, make_grid
from .config import BACKGROUND_AFTER_OBJECT, BACKGROUND_ALONE, SamplerConfig, WorldConfig
from .detector import ConceptDetector, load_detector
from .io import MODEL_FILE, WEIGHTS_DIR, load_meta, load_model
from .model import ToyModel
from .renderer import Scene, object_phrase, sample_scene
from .sampler import UNCONDITIONAL, sample

MIN_CONCEPT_RATE = 0.90
MAX_COOCCURRENCE_GAP = 0.05
RESULTS_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
GRID_SAMPLES = 8
GRID_CELL = 64  # px per 32 px sample
QUALITY_SEED_BASE = 10_000
UNCONDITIONAL_KEY = "<unconditional>"
MARGINAL_KEY = "<training captions>"
GUIDED_MARGINAL_PREFIX = "<training captions, guidance "
MARGINAL_CAPTION_SEED = 4242
DEFAULT_MARGINAL_GUIDANCE = (1.5, 2.0)


def guided_marginal_key(guidance_scale: float) -> str:
    """Key of the training-caption samples drawn at ``guidance_scale`` (:data:`MARGINAL_KEY` at 1)."""
    return MARGINAL_KEY if guidance_scale == 1.0 else f"{GUIDED_MARGINAL_PREFIX}{guidance_scale:g}>"


def single_concept_prompts(world: WorldConfig) -> list[tuple[str, str]]:
    """(prompt, concept) for every object ("a boat") and every background ("water")."""
    return [(object_phrase(o, None), o) for o in world.objects] + [(BACKGROUND_ALONE[b], b) for b in world.backgrounds]


def sample_quality_images(
    model: ToyModel,
    world: WorldConfig,
    n_seeds: int,
    n_uncond: int,
    sampler: SamplerConfig,
    marginal_guidance: Sequence[float] = (),
) -> dict[str, torch.Tensor]:
    """Every image the checks score: each single-concept prompt over ``n_seeds`` seeds; ``n_uncond``
    samples of the empty prompt (no guidance) under :data:`UNCONDITIONAL_KEY`; ``n_uncond`` samples of
    captions drawn from the training distribution (no guidance) under :data:`MARGINAL_KEY`; and the same
    captions and seeds at each scale of ``marginal_guidance`` (:func:`guided_marginal_key`)."""
    seeds = [QUALITY_SEED_BASE + i for i in range(n_seeds)]
    images = {prompt: sample(model, [prompt] * n_seeds, seeds, sampler) for prompt, _ in single_concept_prompts(world)}
    unguided = replace(sampler, guidance_scale=1.0)
    useeds = [QUALITY_SEED_BASE + n_seeds + i for i in range(n_uncond)]
    images[UNCONDITIONAL_KEY] = sample(model, [UNCONDITIONAL] * n_uncond, useeds, unguided)
    mseeds = [QUALITY_SEED_BASE + n_seeds + n_uncond + i for i in range(n_uncond)]
    captions = training_captions(world, n_uncond)
    for scale in (1.0, *marginal_guidance):
        images[guided_marginal_key(scale)] = sample(model, captions, mseeds, replace(sampler, guidance_scale=scale))
    return images


def training_scenes(world: WorldConfig, n: int, seed: int = MARGINAL_CAPTION_SEED) -> list[Scene]:
    """``n`` scenes drawn as training draws them; their captions are :func:`training_captions`."""
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, world) for _ in range(n)]


def training_captions(world: WorldConfig, n: int, seed: int = MARGINAL_CAPTION_SEED) -> list[str]:
    """``n`` captions drawn as training draws them (before caption dropout). Sampling each without guidance
    is ancestral sampling of the model's joint distribution of scenes: caption ~ p(caption), image ~
    p(image | caption); where a caption names only the object, the model chooses the background."""
    return [scene.caption for scene in training_scenes(world, n, seed)]


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


def caption_agreement(images: torch.Tensor, scenes: Sequence[Scene], detector: ConceptDetector) -> dict:
    """Where a co-occurrence gap in ``images`` (sampled from the captions of ``scenes``) comes from.

    * ``captioned_objects_drawn``: share of captions naming an object whose image shows that object;
    * ``home_object_detections``: detections of objects that have a home background, split into those the
      caption named and those it did not (a chimera read as another object), each with the share on
      that object's home background;
    * ``object_only_captions``: P(home | object) where the caption names only the object ("a sun") and the
      object was drawn: the background the model chose itself.
    """
    world, det = detector.world, detector.detect(images)
    present = {label: detector.present(det, label) for label in world.labels}
    named, drawn = 0, 0
    kinds = {"captioned": [0, 0], "not_in_caption": [0, 0]}  # [count, at home]
    object_only: dict[str, list[int]] = {obj: [0, 0] for obj in world.home_background}
    for i, scene in enumerate(scenes):
        if scene.obj is not None:
            named += 1
            drawn += bool(present[scene.obj][i])
        names_background = scene.obj is not None and BACKGROUND_AFTER_OBJECT[scene.background] in scene.caption
        for obj, (home, _) in world.home_background.items():
            if not present[obj][i]:
                continue
            at_home = bool(present[home][i])
            kind = kinds["captioned" if obj == scene.obj else "not_in_caption"]
            kind[0] += 1
            kind[1] += at_home
            if obj == scene.obj and not names_background:
                object_only[obj][0] += 1
                object_only[obj][1] += at_home

    def share(count: int, hits: int) -> dict:
        return {"count": count, "at_home": hits / count if count else None}

    total = [sum(v[k] for v in object_only.values()) for k in (0, 1)]
    return {
        "captioned_objects_drawn": drawn / named if named else None,
        "home_object_detections": {kind: share(*v) for kind, v in kinds.items()},
        "object_only_captions": {**{obj: share(*v) for obj, v in object_only.items()}, "all": share(*total)},
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
    guided_marginal = {
        key[len(GUIDED_MARGINAL_PREFIX) : -1]: cooccurrence(images[key], detector)
        for key in images
        if key.startswith(GUIDED_MARGINAL_PREFIX)
    }
    breakdown = None
    if MARGINAL_KEY in images:
        marginal = images[MARGINAL_KEY]
        breakdown = caption_agreement(marginal, training_scenes(world, len(marginal)), detector)
    return {
        "single_concept": single,
        "single_concept_min_rate": min(v["rate"] for v in single.values()),
        "single_concept_all_pass": all(v["pass"] for v in single.values()),
        "cooccurrence_object_prompts": cooc_prompt,
        "cooccurrence_object_prompts_max_gap": max(v["gap"] for v in cooc_prompt.values()),
        "cooccurrence_empty_prompt": unguided.get(UNCONDITIONAL_KEY),
        "cooccurrence_training_captions": unguided.get(MARGINAL_KEY),
        "cooccurrence_training_captions_by_guidance": guided_marginal,
        "training_captions_breakdown": breakdown,
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
    p.add_argument("--marginal-guidance", type=float, nargs="*", default=list(DEFAULT_MARGINAL_GUIDANCE),
                   help="also sample the training captions at these guidance scales (for information)")
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
        images = sample_quality_images(model, world, args.seeds, args.unconditional, sampler, args.marginal_guidance)
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
    guided = result["cooccurrence_training_captions_by_guidance"]
    print("P(home | object): config / guided object prompt / empty prompt (n) / training captions (n)"
          + "".join(f" / captions at guidance {g}" for g in guided))
    for obj, row in result["cooccurrence_object_prompts"].items():
        e, m = empty["per_object"][obj], marginal["per_object"][obj]
        print(f"  {obj:8s} {row['home']:6s} {row['config']:.2f} / {row['generated']:.3f} / "
              f"{e.get('generated', float('nan')):.3f} ({e['count']}) / {m.get('generated', float('nan')):.3f} ({m['count']})"
              + "".join(f" / {g['per_object'][obj].get('generated', float('nan')):.3f}" for g in guided.values()))


if __name__ == "__main__":
    main()
