"""Toy world: renderer grammar and statistics, engine protocols, training steps, sampler determinism."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from erasure.sites import discover_sites
from erasure.toyworld.config import DetectorConfig, ModelConfig, SamplerConfig, TrainConfig, WorldConfig
from erasure.toyworld.detector import ConceptDetector, Detector, augment
from erasure.toyworld.io import DETECTOR_FILE, MODEL_FILE, WEIGHTS_DIR, load_model
from erasure.toyworld.model import ToyModel
from erasure.toyworld.renderer import render, render_batch, sample_scene, vocabulary
from erasure.toyworld.sampler import sample
from erasure.toyworld.train import train
from erasure.vectors import TextEncoder

WORLD = WorldConfig()
TINY = replace(ModelConfig(), text_width=16, text_heads=2, unet_channels=(8, 16), unet_head_dim=8, unet_groups=4)


def tiny_model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(vocabulary(WORLD), TINY).eval()


def test_render_is_deterministic_and_in_range() -> None:
    a = render_batch(np.random.default_rng(3), 8, WORLD)
    b = render_batch(np.random.default_rng(3), 8, WORLD)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    assert a[0].shape == (8, 3, 32, 32) and a[0].min() >= -1 and a[0].max() <= 1
    assert (a[1][:, len(WORLD.objects) :].sum(1) == 1).all()  # exactly one background


def test_captions_follow_grammar() -> None:
    rng = np.random.default_rng(0)
    words = set(vocabulary(WORLD))
    for _ in range(300):
        scene = sample_scene(rng, WORLD)
        assert set(scene.caption.split()) <= words
        if scene.obj is not None:
            assert scene.obj in scene.caption.split()
        else:
            assert scene.background in scene.caption.split()


def test_co_occurrence_matches_config() -> None:
    rng = np.random.default_rng(1)
    pairs = Counter()
    objs = Counter()
    for _ in range(12000):
        s = sample_scene(rng, WORLD)
        if s.obj is not None:
            objs[s.obj] += 1
            pairs[s.obj, s.background] += 1
    for obj, (home, p) in WORLD.home_background.items():
        assert abs(pairs[obj, home] / objs[obj] - p) < 0.05, obj
    car_water = pairs["car", "water"] / objs["car"]
    assert abs(car_water - 1 / len(WORLD.backgrounds)) < 0.05


def test_every_object_renders_distinctly() -> None:
    rng = np.random.default_rng(0)
    base = sample_scene(rng, WORLD)
    imgs = [render(replace(base, obj=o, background="sky", colour=None), np.random.default_rng(5), WORLD) for o in WORLD.objects]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 0.01, (WORLD.objects[i], WORLD.objects[j])


def test_text_encoder_protocol_and_positions() -> None:
    enc = tiny_model().encoder()
    assert isinstance(enc, TextEncoder) and enc.width == TINY.text_width
    a, b, c = enc.encode(["a boat on water", "a red car", ""], ["water", "red car", ""])
    assert a.vectors.shape == (6, 16)  # BOS a boat on water EOS
    assert a.phrase.tolist() == [4] and a.tail.tolist() == [5]
    assert b.phrase.tolist() == [2, 3] and b.tail.tolist() == [4]
    assert c.vectors.shape[0] == 2 and c.phrase.numel() == 0 and c.tail.tolist() == [1]
    # causal: the prefix "a boat" has the same vectors in both prompts
    d = enc.encode(["a boat"], ["boat"])[0]
    assert torch.allclose(a.vectors[:3], d.vectors[:3], atol=1e-6)
    with pytest.raises(ValueError):
        enc.encode(["a boat"], ["fish"])


def test_sites_discovered_and_weights_reloaded() -> None:
    model = tiny_model()
    sites = discover_sites(model.unet.state_dict())
    n_levels = 2 * len(TINY.unet_channels) + 1
    assert len(sites) == 2 * n_levels
    assert all(s.name.endswith(("attn2.to_k", "attn2.to_v")) and s.in_features == TINY.text_width for s in sites)
    edited = {sites[0].name: torch.zeros_like(sites[0].weight)}
    clone = model.with_unet_weights(edited)
    assert torch.count_nonzero(clone.unet.state_dict()[f"{sites[0].name}.weight"]) == 0
    assert torch.count_nonzero(model.unet.state_dict()[f"{sites[0].name}.weight"]) > 0
    with pytest.raises(KeyError):
        model.with_unet_weights({"nope": sites[0].weight})


def test_a_few_training_steps_run_and_reduce_nothing_to_nan(tmp_path) -> None:
    cfg = replace(TrainConfig(), steps=3, batch_size=4, warmup_steps=1, checkpoint_every=2, num_threads=1)
    out = tmp_path / "m.safetensors"
    ema, stats = train(WORLD, TINY, cfg, out, progress=False)
    assert stats["steps_done"] == 3 and out.exists() and out.with_suffix(".json").exists()
    assert all(torch.isfinite(p).all() for p in ema.parameters())
    reloaded, world = load_model(out)
    assert world.objects == WORLD.objects
    for (k, v), (k2, v2) in zip(ema.state_dict().items(), reloaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_sampler_is_seeded_per_image() -> None:
    model = tiny_model()
    cfg = replace(SamplerConfig(), steps=3, batch_size=2)
    a = sample(model, ["a boat", "a fish", "water"], [1, 2, 3], cfg)
    b = sample(model, ["a fish"], [2], replace(cfg, batch_size=1))
    assert a.shape == (3, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert torch.allclose(a[1], b[0], atol=1e-3)  # batching only changes float rounding


def test_detector_shapes_and_names() -> None:
    cfg = DetectorConfig()
    det = ConceptDetector(Detector(len(WORLD.objects), len(WORLD.backgrounds), cfg), WORLD, cfg.threshold)
    x = augment(torch.rand(4, 3, 32, 32), torch.Generator().manual_seed(0), cfg)
    d = det.detect(x)
    assert d.objects.shape == (4, len(WORLD.objects)) and d.background.shape == (4,)
    assert det.present(d, "boat").shape == (4,) and det.present(d, "water").dtype == bool
    with pytest.raises(KeyError):
        det.present(d, "dragon")


@pytest.mark.skipif(not (WEIGHTS_DIR / MODEL_FILE).exists(), reason="toy model not trained yet")
def test_committed_model_loads_and_exposes_sites() -> None:
    model, world = load_model()
    sites = discover_sites(model.unet.state_dict())
    assert len(sites) == 14 and {s.in_features for s in sites} == {model.encoder().width}


@pytest.mark.skipif(not (WEIGHTS_DIR / DETECTOR_FILE).exists(), reason="detector not trained yet")
def test_committed_detector_reads_clean_renders() -> None:
    from erasure.toyworld.detector import load_detector

    det = load_detector()
    images, labels, _ = render_batch(np.random.default_rng(99), 64, det.world)
    d = det.detect(torch.from_numpy(images) * 0.5 + 0.5)
    n_obj = len(det.world.objects)
    assert (d.background == labels[:, n_obj:].argmax(1)).mean() > 0.95
    assert (d.objects == (labels[:, :n_obj] > 0.5)).mean() > 0.98


def test_second_stage_continues_from_saved_weights(tmp_path) -> None:
    cfg = replace(TrainConfig(), steps=2, batch_size=2, warmup_steps=1, num_threads=1)
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    train(WORLD, TINY, cfg, first, progress=False)
    train(WORLD, TINY, replace(cfg, seed=1), second, progress=False, init=first)
    import json

    meta = json.loads(second.with_suffix(".json").read_text())
    assert meta["stats"]["total_steps_all_stages"] == 4 and len(meta["history"]) == 1
    with pytest.raises(ValueError):
        train(WORLD, TINY, cfg, first, progress=False, init=first)


@pytest.mark.skipif(not (WEIGHTS_DIR / DETECTOR_FILE).exists(), reason="detector not trained yet")
def test_committed_detector_finds_every_label_it_is_shown() -> None:
    """Recall, not only accuracy: an object is absent from most images, so accuracy can hide misses."""
    from erasure.toyworld.detector import evaluate, load_detector

    det = load_detector()
    scores = evaluate(det, 1200, seed=777, augmented=False, cfg=DetectorConfig())
    assert min(scores["recall"].values()) >= 0.98, scores["recall"]
    assert min(scores["specificity"].values()) >= 0.98, scores["specificity"]
