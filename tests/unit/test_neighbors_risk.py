"""Risk scan: eq. (1) against the direct definition, grouping of shared factors, exclusions, re-ranking;
the risk-side suggestion and the pipeline."""

from __future__ import annotations

import pytest
import torch

from erasure.concepts import ConceptSet
from erasure.delta import LowRankUpdate
from erasure.erase import EraseSettings, erase
from erasure.neighbors import (
    NeighborSettings,
    RiskIndex,
    Vocabulary,
    embed_vocabulary,
    relate,
    risk_scan,
    scan,
    suggest_care,
)
from erasure.neighbors.pipeline import naive_edit
from tests.fakes import WordHashEncoder, random_sites
from tests.unit.test_neighbors import VectorEncoder, _world

CONCEPTS = ["water", "tree", "sea shore", "boat", "a boat on water", "red car"]


def direct_drift(sites, updates, rows: torch.Tensor) -> float:
    num = sum(float((rows.double() @ updates[s.name].dense().T).pow(2).sum()) for s in sites)
    den = sum(float((rows.double() @ s.weight.double().T).pow(2).sum()) for s in sites)
    return (num / den) ** 0.5


@pytest.fixture
def setup():
    enc, sites = WordHashEncoder(), random_sites()
    updates = erase(sites, enc, ConceptSet.from_text("boat"), EraseSettings()).delta.updates
    emb, _ = embed_vocabulary(enc, CONCEPTS, use_cache=False)
    return enc, sites, updates, emb


def test_drift_matches_direct_definition(setup) -> None:
    _, sites, updates, emb = setup
    drift = RiskIndex.build(sites, emb).drift(updates)
    for i, concept in enumerate(emb.concepts):
        rows = emb.rows[emb.offsets[i] : emb.offsets[i + 1]]
        assert float(drift[i]) == pytest.approx(direct_drift(sites, updates, rows), rel=1e-5), concept


def test_sites_with_their_own_factors_give_the_same_drift(setup) -> None:
    _, sites, updates, emb = setup
    index = RiskIndex.build(sites, emb)
    g = torch.Generator().manual_seed(3)
    mixed = {}
    for k, (name, u) in enumerate(updates.items()):  # one site gets an unrelated factor pair, others copies
        mixed[name] = LowRankUpdate(torch.randn(u.up.shape, generator=g), torch.randn(u.down.shape, generator=g)) if k == 0 \
            else LowRankUpdate(u.up, u.down.clone())
    drift = index.drift(mixed)
    for i in range(len(emb.concepts)):
        rows = emb.rows[emb.offsets[i] : emb.offsets[i + 1]]
        assert float(drift[i]) == pytest.approx(direct_drift(sites, mixed, rows), rel=1e-5)
    with pytest.raises(ValueError, match="not built for"):
        index.drift({"elsewhere": next(iter(updates.values()))})


def test_scan_ranks_and_excludes_targets_and_containing_concepts(setup) -> None:
    _, sites, updates, emb = setup
    index = RiskIndex.build(sites, emb, ["c"] * len(emb))
    pooled = emb.pooled()
    rel = relate(emb.concepts, pooled, ["boat"], pooled[3:4])
    report = scan(index, updates, rel)
    ranked = [r.concept for r in report.rows]
    assert "boat" not in ranked and "a boat on water" not in ranked
    assert {e.concept: e.reason for e in report.excluded} == {"boat": "target", "a boat on water": "contains target"}
    drifts = [r.drift for r in report.rows]
    assert drifts == sorted(drifts, reverse=True)
    assert report.excluded[0].drift > drifts[0]  # the target moves most: that is the erasure
    assert len(scan(index, updates, rel, top_k=2).rows) == 2
    assert report.care_text(2).splitlines() == ranked[:2]


def test_denoiser_drift_reranks_only_the_head(setup) -> None:
    _, sites, updates, emb = setup
    index = RiskIndex.build(sites, emb)
    base = scan(index, updates)
    seen = []

    def reversed_drift(concepts):  # noqa: ANN001, ANN202
        seen.extend(concepts)
        return list(range(len(concepts)))  # the lowest site drift gets the highest denoiser drift

    report = scan(index, updates, denoiser_drift=reversed_drift, denoiser_top_k=3)
    assert seen == [r.concept for r in base.rows[:3]]
    assert [r.concept for r in report.rows[:3]] == seen[::-1]
    assert [r.concept for r in report.rows[3:]] == [r.concept for r in base.rows[3:]]
    assert report.rows[0].denoiser_drift == 2 and report.rows[3].denoiser_drift is None


def test_risk_suggestion_finds_the_concept_the_naive_edit_damages() -> None:
    vec, concepts = _world(width=32)
    enc = VectorEncoder(vec, 32, fingerprint="world")
    sites = random_sites(width=32, outs=(48, 64, 48))
    vocab = Vocabulary.from_pairs((c, "test") for c in concepts)
    s = suggest_care("risk", sites, enc, vocab, ["boat"], NeighborSettings(use_cache=False))
    assert s.concepts[:2] and set(s.concepts[:2]) <= {"water", "harbour"}
    assert "ship" not in s.concepts and "sailing boat" not in s.concepts
    assert {f.concept for f in s.flagged} >= {"sailing boat"}


def test_pipeline_scan_protecting_the_top_risk_lowers_its_drift() -> None:
    """The loop the scan exists for: erase -> scan -> protect the top concept -> re-erase -> it moves less."""
    vec, concepts = _world(width=32)
    enc = VectorEncoder(vec, 32, fingerprint="world")
    sites = random_sites(width=32, outs=(48, 64, 48))
    vocab = Vocabulary.from_pairs((c, "test") for c in concepts)
    before = risk_scan(sites, enc, vocab, naive_edit(sites, enc, ["boat"]), ["boat"], NeighborSettings(use_cache=False))
    top = before.rows[0]
    protected = ConceptSet.from_text("boat", care=top.concept)
    after = risk_scan(sites, enc, vocab, erase(sites, enc, protected).delta.updates, protected,
                      NeighborSettings(use_cache=False))
    assert next(r.drift for r in after.rows if r.concept == top.concept) < 0.5 * top.drift
    assert "concepts" in before.stats and before.as_table().startswith("rank")
    with pytest.raises(ValueError, match="choose 'text' or 'risk'"):
        suggest_care("image", sites, enc, vocab, ["boat"])


def test_risk_index_memo_follows_weight_content_and_takes_inference_tensors() -> None:
    """ComfyUI hands the scan freshly patched weights made under ``torch.inference_mode()`` (no version
    counter). Equal weights share an index; other weights (even at a reused address) get their own."""
    from erasure.neighbors.pipeline import prepare, risk_index

    vec, concepts = _world(width=32)
    enc = VectorEncoder(vec, 32, fingerprint="world")
    vocab = Vocabulary.from_pairs((c, "test") for c in concepts)
    settings = NeighborSettings(use_cache=False)
    prepared = prepare(enc, vocab, ["boat"], settings)
    with torch.inference_mode():
        sites = random_sites(width=32, outs=(48, 64, 48), seed=11)
        same = random_sites(width=32, outs=(48, 64, 48), seed=11)
        other = random_sites(width=32, outs=(48, 64, 48), seed=12)
    first = risk_index(sites, enc, prepared, settings)
    assert risk_index(same, enc, prepared, settings) is first
    assert risk_index(other, enc, prepared, settings) is not first
    assert not torch.equal(risk_index(other, enc, prepared, settings).output_energy, first.output_energy)
