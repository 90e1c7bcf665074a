"""Audit metrics on cases with known answers: identical models, an erasure of X, exact PSNR, ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from erasure.audit import (
    AuditReport,
    ImagePair,
    SigmaDenoiser,
    auc,
    denoiser_drift,
    paired_fidelity,
    psnr,
    run_audit,
    site_drift,
    spearman,
    ssim,
    updates_from_weights,
)
from erasure.audit.denoiser import probe_timesteps
from erasure.audit.fidelity import PSNR_IDENTICAL_DB
from erasure.audit.probes import Probe, parse_probes, probes_from_concepts
from erasure.concepts import ConceptSet
from erasure.delta import LowRankUpdate
from erasure.erase import EraseSettings, erase
from erasure.sites import EditSite
from tests.fakes import WordHashEncoder, random_sites

CONCEPTS = ConceptSet.from_text("boat", retained="tree", care="water")
PROBES = probes_from_concepts(CONCEPTS, unrelated=["house", "red car"])


def erased_sites(sites, concepts=CONCEPTS):
    result = erase(sites, WordHashEncoder(), concepts, EraseSettings(lam=1e-3))
    new = result.delta.apply({s.name: s.weight for s in sites})
    return result, [EditSite(s.name, new[s.name]) for s in sites]


class LinearCrossAttnDenoiser:
    """eps(x, t, c) = 0.5 x + mean_tokens(W c) over the prompt's words and end-of-text (padding masked out,
    as in the toy UNet): a text-reading map like a UNet's ``to_v``."""

    def __init__(self, sites, encoder) -> None:
        self.sites, self.encoder = sites, encoder
        self.alphas_cumprod = torch.linspace(0.999, 0.01, 50)
        self.sample_shape = (sum(s.out_features for s in sites),)

    def condition(self, prompts):
        return [self.encoder.encode([p], [p])[0].select("concept_to_eos") for p in prompts]

    def eps(self, x_t, t, cond):
        text = torch.stack([torch.cat([(c @ s.weight.T).mean(0) for s in self.sites]) for c in cond])
        return 0.5 * x_t + text


# ------------------------------------------------------------------------------ site drift
def test_identical_models_have_zero_site_drift() -> None:
    sites = random_sites()
    updates = updates_from_weights(sites, [EditSite(s.name, s.weight.clone()) for s in sites])
    assert site_drift(sites, updates, WordHashEncoder(), PROBES) == [0.0] * len(PROBES)


def test_erasure_drift_is_concentrated_on_the_target() -> None:
    sites = random_sites()
    result, _ = erased_sites(sites)
    drift = dict(zip([p.concept for p in PROBES], site_drift(sites, result.delta.updates, WordHashEncoder(), PROBES)))
    assert drift["boat"] > 0.5
    assert max(v for k, v in drift.items() if k != "boat") < 0.5 * drift["boat"]
    # the CARE neighbour, protected with a larger weight, moves less than an unprotected concept
    assert drift["water"] < drift["house"]


def test_site_drift_from_delta_equals_drift_from_weights() -> None:
    sites = random_sites()
    result, edited = erased_sites(sites)
    enc = WordHashEncoder()
    a = site_drift(sites, result.delta.updates, enc, PROBES)
    b = site_drift(sites, updates_from_weights(sites, edited), enc, PROBES)
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_site_drift_scales_linearly_with_update_strength() -> None:
    sites, enc = random_sites(), WordHashEncoder()
    result, _ = erased_sites(sites)
    half = {n: LowRankUpdate(0.5 * u.up, u.down) for n, u in result.delta.updates.items()}
    full, halved = site_drift(sites, result.delta.updates, enc, PROBES), site_drift(sites, half, enc, PROBES)
    assert np.allclose(np.array(full) / 2, halved)


def test_updates_from_weights_refuses_other_models() -> None:
    with pytest.raises(ValueError, match="lacks"):
        updates_from_weights(random_sites(), random_sites()[:1])


# ------------------------------------------------------------------------------ denoiser drift
def test_identical_denoisers_have_zero_drift() -> None:
    sites, enc = random_sites(), WordHashEncoder()
    d = LinearCrossAttnDenoiser(sites, enc)
    assert denoiser_drift(d, LinearCrossAttnDenoiser(sites, enc), PROBES, seeds=(0, 1)) == [0.0] * len(PROBES)


def test_denoiser_drift_is_concentrated_on_the_target() -> None:
    sites, enc = random_sites(), WordHashEncoder()
    _, edited = erased_sites(sites)
    drift = denoiser_drift(LinearCrossAttnDenoiser(sites, enc), LinearCrossAttnDenoiser(edited, enc), PROBES)
    by = dict(zip([p.concept for p in PROBES], drift))
    assert by["boat"] == max(by.values())
    assert by["water"] < 0.5 * by["boat"]


def test_sigma_denoiser_recovers_epsilon() -> None:
    """A VE model built from a known eps function: SigmaDenoiser must give that function back."""
    abar = torch.linspace(0.99, 0.05, 20)

    def f(x):
        return torch.tanh(x) * 0.3

    def denoise(x, sigma, cond):  # x = x0 + sigma n with n = f(x_t), x_t = x / sqrt(1 + sigma^2)
        s = sigma.view(-1, 1)
        return x - s * f(x / (1 + s**2).sqrt())

    d = SigmaDenoiser(denoise, lambda p: None, abar, (4,))
    x_t = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([2, 10, 19])
    assert torch.allclose(d.eps(x_t, t, None), f(x_t), atol=1e-5)
    from_sigmas = SigmaDenoiser.from_sigmas(denoise, lambda p: None, ((1 - abar) / abar).sqrt(), (4,))
    assert torch.allclose(from_sigmas.alphas_cumprod, abar, atol=1e-6)


def test_probe_timesteps() -> None:
    from erasure.audit.denoiser import DEFAULT_TIMESTEP_FRACTIONS, spread_fractions

    assert spread_fractions() == DEFAULT_TIMESTEP_FRACTIONS
    assert spread_fractions(1) == (0.6,)
    assert probe_timesteps(1000, (1.0, 0.5)) == [999, 500]
    with pytest.raises(ValueError):
        probe_timesteps(1000, (0.0,))


# ------------------------------------------------------------------------------ fidelity
def test_identical_images_have_perfect_fidelity() -> None:
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert ssim(img, img) == pytest.approx(1.0)
    assert psnr(img, img) == PSNR_IDENTICAL_DB
    assert paired_fidelity([img, img], [img, img]) == (pytest.approx(1.0), PSNR_IDENTICAL_DB)


def test_psnr_known_value_and_layouts() -> None:
    a = np.zeros((16, 16, 3))
    b = np.full((16, 16, 3), 51 / 255)  # MSE = 0.04 -> 10 log10(1 / 0.04) dB
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04), abs=1e-6)
    assert psnr(torch.from_numpy(a).permute(2, 0, 1), b) == pytest.approx(psnr(a, b))  # CHW == HWC
    noisy = np.clip(b + np.random.default_rng(0).normal(0, 0.2, b.shape), 0, 1)
    assert ssim(b, noisy) < 0.9


@pytest.mark.parametrize("size", [32, 5])
def test_ssim_and_psnr_agree_with_scikit_image(size: int) -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(size)
    a = rng.integers(0, 256, (size, size, 3)).astype(np.float64) / 255
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    b = np.rint(b * 255) / 255
    win = 7 if size >= 7 else size
    ref = metrics.structural_similarity(a, b, channel_axis=-1, data_range=1.0, win_size=win)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-9)
    assert psnr(a, b) == pytest.approx(metrics.peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)


def test_fidelity_refuses_mismatched_pairs() -> None:
    with pytest.raises(ValueError):
        psnr(np.zeros((8, 8, 3)), np.zeros((9, 8, 3)))
    with pytest.raises(ValueError):
        paired_fidelity([np.zeros((8, 8, 3))], [])


# ------------------------------------------------------------------------------ ranks
def test_spearman_known_answers() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 1], [1, 2, 3]) is None
    # ties averaged: ranks [1.5, 1.5, 3] vs [1, 2, 3] -> rho = 0.866...
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)


# ------------------------------------------------------------------------------ probes
def test_probes_from_concepts_tags() -> None:
    assert [p.concept for p in PROBES] == ["boat", "water", "tree", "house", "red car"]  # grouped by tag
    tags = {p.concept: p.tag for p in PROBES}
    assert tags == {
        "boat": "target",
        "tree": "unrelated",
        "water": "care",
        "house": "unrelated",
        "red car": "unrelated",
    }


def test_parse_probes() -> None:
    probes = parse_probes("target: boat\ncare: water | a calm lake  # comment\n\na red car\n", template="a photo of {}")
    assert probes == [
        Probe("boat", "target", "a photo of boat"),
        Probe("water", "care", "a calm lake"),
        Probe("a red car", "unrelated", "a photo of a red car"),
    ]
    with pytest.raises(ValueError, match="empty"):
        parse_probes("# nothing")


# ------------------------------------------------------------------------------ the whole audit
def test_run_audit_on_identical_models_is_clean() -> None:
    sites, enc = random_sites(), WordHashEncoder()
    img = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    images = {p.concept: ImagePair(img, img.clone()) for p in PROBES}
    report = run_audit(
        PROBES,
        sites=sites,
        updates={},
        encoder=enc,
        original=LinearCrossAttnDenoiser(sites, enc),
        edited=LinearCrossAttnDenoiser(sites, enc),
        images=images,
    )
    for row in report.rows:
        assert row.site_drift == 0.0 and row.denoiser_drift == 0.0
        assert row.ssim == pytest.approx(1.0) and row.psnr == PSNR_IDENTICAL_DB
    assert AuditReport.from_json(report.to_json()).rows == report.rows


def test_run_audit_progress_and_interrupt() -> None:
    sites, enc = random_sites(), WordHashEncoder()
    calls = []
    run_audit(PROBES, sites=sites, updates={}, encoder=enc, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(sites), len(sites))

    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    with pytest.raises(Stop):
        run_audit(PROBES, sites=sites, updates={}, encoder=enc, progress=stop)


def test_auc_known_answers() -> None:
    assert auc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == pytest.approx(1.0)
    assert auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == pytest.approx(0.0)
    assert auc([0.5, 0.5, 0.5], [True, False, False]) == pytest.approx(0.5)  # ties count one half
    assert auc([3.0, 1.0, 2.0], [True, False, True]) == pytest.approx(1.0)
    assert auc([4.0, 3.0, 2.0, 0.0], [True, False, True, False]) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert auc([1.0, 2.0], [True, True]) is None
