"""The toy model's quality check scored on renders (the known answer), and the demo's outputs."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

from erasure.delta import load_delta
from erasure.sites import discover_sites
from erasure.toyworld import demo
from erasure.toyworld.detector import load_detector
from erasure.toyworld.io import load_model
from erasure.toyworld.quality import (
    MARGINAL_KEY,
    UNCONDITIONAL_KEY,
    caption_agreement,
    guided_marginal_key,
    score_quality,
    single_concept_prompts,
    training_scenes,
)
from erasure.toyworld.renderer import Scene, render, sample_scene


@pytest.fixture(scope="module")
def detector():  # noqa: ANN201
    return load_detector()


def renders(scenes: list[Scene], seed: int) -> torch.Tensor:
    """Rendered scenes as the sampler returns images: ``[N, 3, H, W]`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    world = load_detector().world
    return torch.from_numpy(np.stack([render(s, rng, world).transpose(2, 0, 1) for s in scenes]))


def scenes_for(concept: str, n: int, seed: int, world) -> list[Scene]:  # noqa: ANN001
    """``n`` scenes drawn from the world's statistics that contain ``concept`` (an object or a background)."""
    rng = np.random.default_rng(seed)
    found: list[Scene] = []
    while len(found) < n:
        scene = sample_scene(rng, world)
        if concept in (scene.obj, scene.background) and (concept in world.objects or scene.obj is None):
            found.append(scene)
    return found


def rendered_world(world, per_prompt: int, unconditional: int) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """What a perfect model would draw: renders for every quality prompt and for the unconditional key."""
    images = {
        prompt: renders(scenes_for(concept, per_prompt, seed=i, world=world), seed=100 + i)
        for i, (prompt, concept) in enumerate(single_concept_prompts(world))
    }
    for key, seed in ((UNCONDITIONAL_KEY, 7), (guided_marginal_key(1.5), 11)):
        rng = np.random.default_rng(seed)
        images[key] = renders([sample_scene(rng, world) for _ in range(unconditional)], seed=seed + 1)
    images[MARGINAL_KEY] = renders(training_scenes(world, unconditional), seed=10)  # drawn from its captions
    return images


def test_quality_check_passes_on_the_worlds_own_renders(detector) -> None:  # noqa: ANN001
    world = detector.world
    result = score_quality(rendered_world(world, per_prompt=24, unconditional=1500), detector)
    assert result["single_concept_all_pass"], result["single_concept"]
    # 1,500 scenes: the object share and P(home | object) are the config's, up to sampling error.
    assert list(result["cooccurrence_training_captions_by_guidance"]) == ["1.5"]
    scored = {key: result[key] for key in ("cooccurrence_empty_prompt", "cooccurrence_training_captions")}
    scored["guidance 1.5"] = result["cooccurrence_training_captions_by_guidance"]["1.5"]
    for key, summary in scored.items():
        assert abs(summary["object_share"] - result["config_object_share"]) < 0.04
        for obj, row in summary["per_object"].items():
            if "gap" in row:
                assert row["gap"] < 4 * row["standard_error"] + 0.02, (key, obj, row)
    # Renders of the training captions draw every captioned object and nothing else.
    breakdown = result["training_captions_breakdown"]
    detections = breakdown["home_object_detections"]
    assert breakdown["captioned_objects_drawn"] > 0.98
    assert detections["not_in_caption"]["count"] <= 0.01 * detections["captioned"]["count"]
    for obj, row in breakdown["object_only_captions"].items():
        if obj != "all":
            p = world.home_background[obj][1]
            assert abs(row["at_home"] - p) < 4 * np.sqrt(p * (1 - p) / row["count"]) + 0.02, (obj, row)


def test_caption_agreement_sees_images_that_do_not_follow_their_captions(detector) -> None:  # noqa: ANN001
    world = detector.world
    scenes = training_scenes(world, 400)
    images = renders(scenes, seed=3)
    follows = caption_agreement(images, scenes, detector)
    shifted = caption_agreement(images.roll(1, dims=0), scenes, detector)  # each image from the next caption
    assert follows["captioned_objects_drawn"] > 0.98 > 0.3 > shifted["captioned_objects_drawn"]
    moved = shifted["home_object_detections"]["not_in_caption"]["count"]
    assert moved > 10 * max(1, follows["home_object_detections"]["not_in_caption"]["count"])


def test_quality_check_fails_a_model_that_ignores_the_prompt(detector) -> None:  # noqa: ANN001
    world = detector.world
    images = rendered_world(world, per_prompt=8, unconditional=64)
    images["a boat"] = images["water"]  # "a boat" draws plain water
    result = score_quality(images, detector)
    assert result["single_concept"]["a boat"]["rate"] < 0.2
    assert not result["single_concept"]["a boat"]["pass"] and not result["single_concept_all_pass"]


def test_demo_writes_grid_audit_and_a_lora_for_the_toy_model(tmp_path) -> None:
    args = argparse.Namespace(out=tmp_path, target="boat", seeds=2, threads=1)
    assert demo.run(args) == 0
    audit = json.loads((tmp_path / "demo_audit.json").read_text())
    assert audit["target"] == "boat" and audit["care"] == ["water"]
    assert set(audit["audit"]) == set(demo.COLUMNS)
    assert all(0.0 <= s["rate"] <= 1.0 for column in audit["audit"].values() for s in column.values())
    with Image.open(tmp_path / "demo_grid.png") as grid:
        # five prompt rows of GRID_CELL-pixel cells, three model groups of min(seeds, GRID_SAMPLES) columns
        assert grid.height > 5 * demo.GRID_CELL and grid.width > 3 * 2 * demo.GRID_CELL
    model, _ = load_model()
    site_names = [site.name for site in discover_sites(model.unet.state_dict())]
    delta = load_delta(tmp_path / "erase_boat_care.safetensors", site_names)
    assert delta.updates and set(delta.updates) <= set(site_names)
