"""Toy world x engine: every benchmark method runs on the toy model and only edits cross-attention k/v."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from erasure.toyworld.config import DetectorConfig, ModelConfig, SamplerConfig, WorldConfig
from erasure.toyworld.detector import ConceptDetector, Detector
from erasure.toyworld.evaluate import METHODS, Scorer, concept_set, erase_model, make_case
from erasure.toyworld.model import ToyModel
from erasure.toyworld.renderer import vocabulary

WORLD = WorldConfig()
TINY = replace(ModelConfig(), text_width=64, text_heads=2, unet_channels=(8, 16), unet_head_dim=8, unet_groups=4)


@pytest.fixture(scope="module")
def model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(vocabulary(WORLD), TINY).eval()


def test_cases_know_their_care_partners() -> None:
    boat = make_case("boat", WORLD)
    assert boat.care == ("water",)
    assert [p.text for p in boat.mixed_prompts] == ["a boat on water"]
    assert all(p.concept not in ("boat", "water", "fish") for p in boat.unrelated)  # fish shares water
    car = make_case("car", WORLD)
    assert car.care == () and car.mixed_prompts == ()


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_edits_only_text_reading_maps(model: ToyModel, method: str) -> None:
    concepts, settings = concept_set(make_case("boat", WORLD), method, WORLD)
    edited, result = erase_model(model, concepts, settings)
    before, after = model.state_dict(), edited.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in changed)
    assert result.report.targets[0].residual < 0.5  # d=64 > rank of the strict retained span


def test_scorer_pairs_images_by_seed(model: ToyModel) -> None:
    cfg = DetectorConfig()
    det = ConceptDetector(Detector(len(WORLD.objects), len(WORLD.backgrounds), cfg), WORLD, cfg.threshold)
    scorer = Scorer(model, det, [1, 2], replace(SamplerConfig(), steps=2))
    case = make_case("boat", WORLD)
    prompts = [case.target_prompt, *case.care_prompts]
    same = scorer.score_many(model.with_unet_weights({}), prompts)
    assert all(s.mad == 0.0 for s in same.values())
    base = scorer.score_many(model, prompts)
    assert base["a boat"].mad is None and 0.0 <= base["a boat"].rate <= 1.0
