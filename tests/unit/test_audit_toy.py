"""The audit on a tiny random toy model: denoiser protocol, paired images, grid, and the CLI end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from erasure.audit.denoiser import Denoiser, denoiser_drift
from erasure.audit.probes import Probe
from erasure.audit.toy import DetectorClassifier, ToyDenoiser, toy_audit, toy_probes, toy_sites
from erasure.cli import main
from erasure.concepts import ConceptSet
from erasure.erase import erase
from erasure.toyworld.config import DetectorConfig, ModelConfig, WorldConfig, to_dict
from erasure.toyworld.detector import ConceptDetector, Detector
from erasure.toyworld.io import config_meta, save_weights
from erasure.toyworld.model import ToyModel
from erasure.toyworld.renderer import vocabulary

WORLD = WorldConfig()
TINY = replace(ModelConfig(), text_width=16, text_heads=2, unet_channels=(8, 16), unet_head_dim=8, unet_groups=4)
TINY_DETECTOR = replace(DetectorConfig(), channels=(4, 8))


@pytest.fixture(scope="module")
def model() -> ToyModel:
    torch.manual_seed(0)
    return ToyModel(vocabulary(WORLD), TINY).eval()


def detector() -> ConceptDetector:
    torch.manual_seed(1)
    return ConceptDetector(Detector(len(WORLD.objects), len(WORLD.backgrounds), TINY_DETECTOR).eval(), WORLD, 0.5)


def test_toy_denoiser_follows_the_protocol_and_identical_models_do_not_drift(model: ToyModel) -> None:
    d = ToyDenoiser(model)
    assert isinstance(d, Denoiser)
    probes = toy_probes([Probe("boat", "target", "boat")], WORLD, every_label=False)
    assert probes[0].prompt == "a boat"
    copy = model.with_unet_weights({})
    assert denoiser_drift(d, ToyDenoiser(copy), probes, seeds=(0,)) == [0.0]


def test_toy_audit_pairs_images_and_draws_grid(model: ToyModel) -> None:
    concepts = ConceptSet.from_text("boat", care="water")
    delta = erase(toy_sites(model), model.encoder(), concepts).delta
    probes = toy_probes([Probe("boat", "target", "boat"), Probe("water", "care", "water")], WORLD, every_label=False)
    probes.append(Probe("house", "unrelated", "a house"))
    result = toy_audit(model, delta, probes, seeds=[0, 1], detector=detector(), sampler_steps=2)
    r = result.report
    assert [row.concept for row in r.rows] == ["boat", "water", "house"]
    assert r.row("boat").site_drift == max(row.site_drift for row in r.rows)
    assert all(row.care_original is not None and row.ssim is not None for row in r.rows)
    assert result.images["boat"].original.shape == (2, 3, 32, 32)
    # zero strength: the edited model is the original -> perfect fidelity, no drift anywhere
    same = toy_audit(model, delta, probes[:1], seeds=[0], sampler_steps=2, strength=0.0).report.rows[0]
    assert same.ssim == pytest.approx(1.0) and same.denoiser_drift == 0.0
    assert result.grid.width > result.grid.height // 2


def test_detector_classifier_knows_toy_labels() -> None:
    clf = DetectorClassifier(detector())
    assert clf.knows("boat") and clf.knows("water") and not clf.knows("dragon")
    assert clf.present(torch.rand(3, 3, 32, 32), "water").shape == (3,)


def test_cli_audit_erase_now_and_saved_delta(model: ToyModel, tmp_path, capsys) -> None:
    weights = tmp_path / "toy.safetensors"
    save_weights(weights, model.state_dict(), config_meta(WORLD, TINY, vocabulary(WORLD)))
    det = tmp_path / "det.safetensors"
    save_weights(det, detector().net.state_dict(), {"world": to_dict(WORLD), "detector": to_dict(TINY_DETECTOR)})
    out = tmp_path / "now"
    common = ["--weights", str(weights), "--seeds", "0", "--steps", "2", "--only-listed", "--unrelated", "house"]
    assert (
        main(["audit", "--erase", "boat", "--care", "water", "--detector", str(det), "--out", str(out), *common]) == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert {r["concept"]: r["tag"] for r in report["rows"]} == {"boat": "target", "water": "care", "house": "unrelated"}
    assert all((out / f).stat().st_size > 0 for f in ("report.csv", "table.png", "bars.png", "grid.png"))
    assert "site drift" in capsys.readouterr().out

    saved = tmp_path / "boat.safetensors"
    erase(toy_sites(model), model.encoder(), ConceptSet.from_text("boat", care="water")).delta.save_lora(saved)
    out2 = tmp_path / "saved"
    assert main(["audit", "--delta", str(saved), "--no-detector", "--out", str(out2), *common]) == 0
    again = json.loads((out2 / "report.json").read_text())
    assert [r["site_drift"] for r in again["rows"]] == pytest.approx(
        [r["site_drift"] for r in report["rows"]], rel=1e-4
    )
