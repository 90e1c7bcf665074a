"""The erase flow end to end on a small causal encoder: effect, report, CARE protection, contexts."""

from __future__ import annotations

import pytest
import torch

from erasure.concepts import ConceptSet
from erasure.erase import EraseSettings, concept_vectors, erase
from erasure.solve import SolveError
from tests.fakes import WordHashEncoder, random_sites


def drift_of(report, concept: str) -> float:
    return next(r.drift for r in report.retained if r.concept == concept)


def test_erasure_moves_target_and_report_agrees() -> None:
    enc = WordHashEncoder()
    r = erase(random_sites(), enc, ConceptSet.from_text("boat"), EraseSettings(lam=1e-4))
    assert r.report.targets[0].residual < 0.05
    assert r.report.stats["rank"] == 2  # "boat" + end-of-text


def test_care_set_protects_cooccurring_concept() -> None:
    enc, sites = WordHashEncoder(), random_sites()
    naive = erase(sites, enc, ConceptSet.from_text("boat", retained="tree"), EraseSettings())
    care = erase(sites, enc, ConceptSet.from_text("boat", retained="tree", care="water : 8"), EraseSettings())
    # water is only measured by the naive run's report if it is in the set: measure it via vectors instead.
    v = concept_vectors(enc, ConceptSet.from_text("boat", retained="water"), EraseSettings())

    def water_drift(result) -> float:
        num = den = 0.0
        for s in sites:
            u = result.delta.updates[s.name]
            num += float(((v.retained @ u.down.T) @ u.up.T).pow(2).sum())
            den += float((v.retained @ s.weight.T).pow(2).sum())
        return (num / den) ** 0.5

    assert water_drift(care) < 0.5 * water_drift(naive)


def test_context_pairs_pull_context_token_back_to_concept() -> None:
    enc, sites = WordHashEncoder(leak=1.0), random_sites()
    base = ConceptSet.from_text("boat", care="water")
    with_ctx = ConceptSet.from_text("boat", care="water", contexts="a boat on water => water")
    inside = enc.encode(["a boat on water"], ["water"])[0]
    alone = enc.encode(["water"], ["water"])[0]
    x, y = inside.vectors[inside.phrase[0]], alone.vectors[alone.phrase[0]]

    def gap(cs) -> float:
        r = erase(sites, enc, cs, EraseSettings(context_scale=4.0))
        new = r.delta.apply({s.name: s.weight for s in sites})
        return sum(float(torch.linalg.norm(new[s.name] @ x - s.weight @ y)) for s in sites)

    assert gap(with_ctx) < 0.5 * gap(base)


def test_templates_multiply_vectors() -> None:
    enc = WordHashEncoder()
    one = concept_vectors(enc, ConceptSet.from_text("boat", retained="tree"), EraseSettings())
    both = ConceptSet.from_text("boat", retained="tree", templates="{}\na photo of {}")
    two = concept_vectors(enc, both, EraseSettings())
    assert two.targets.shape[0] == 2 * one.targets.shape[0]


@pytest.mark.parametrize("scope, rows", [("concept", 1), ("concept_to_eos", 2), ("all", 12)])
def test_token_scopes(scope: str, rows: int) -> None:
    v = concept_vectors(WordHashEncoder(), ConceptSet.from_text("boat"), EraseSettings(token_scope=scope))
    assert v.targets.shape[0] == rows


def test_inputs_untouched_and_progress_reported() -> None:
    sites = random_sites()
    before = [s.weight.clone() for s in sites]
    calls = []
    concepts = ConceptSet.from_text("boat", care="water")
    erase(sites, WordHashEncoder(), concepts, progress=lambda d, t: calls.append((d, t)))
    assert all(torch.equal(s.weight, b) for s, b in zip(sites, before))
    assert calls[-1][0] == calls[-1][1] and len(calls) >= len(sites)


def test_progress_can_interrupt() -> None:
    class Stop(Exception):
        pass

    def stop(done: int, total: int) -> None:
        raise Stop

    with pytest.raises(Stop):
        erase(random_sites(), WordHashEncoder(), ConceptSet.from_text("boat"), progress=stop)


def test_bad_settings() -> None:
    with pytest.raises(SolveError, match="token scope"):
        EraseSettings(token_scope="everything")
    with pytest.raises(SolveError, match="erase_scale"):
        EraseSettings(erase_scale=float("inf"))
