"""The neighbour nodes' glue without ComfyUI: ``comfy_api.latest`` is stubbed with just enough of the V3
schema API to build the schemas and run ``execute``; the engine does the rest on the test doubles.
(The real ComfyUI loads them through ``nodes.extension``; see tests/integration for the server tests.)"""

from __future__ import annotations

import types

import pytest

from erasure.concepts import ConceptSet
from erasure.erase import erase
from tests import comfy_stub
from tests.fakes import WordHashEncoder, random_sites


@pytest.fixture
def nodes_neighbors(monkeypatch):
    comfy_stub.install(monkeypatch)
    module = comfy_stub.fresh_import("nodes.neighbors")
    enc, sites = WordHashEncoder(), random_sites()
    monkeypatch.setattr(module, "_sites", lambda model, choice="auto": ("test", sites))
    monkeypatch.setattr(module, "_encoder", lambda clip: enc)
    yield module, enc, sites
    comfy_stub.forget("nodes.neighbors")


def test_schemas_have_tooltips_everywhere(nodes_neighbors) -> None:
    module, _, _ = nodes_neighbors
    ids = set()
    for node in module.NODES:
        schema = node.define_schema()
        ids.add(schema["node_id"])
        assert schema["description"]
        for item in schema["inputs"] + schema["outputs"]:
            assert item.get("tooltip"), (schema["node_id"], item)
    assert ids == {"CARERiskScan", "CARESuggestCareSet", "CARESuggestFromImages"}


def test_suggest_node_outputs_plug_into_a_concept_set(nodes_neighbors) -> None:
    module, _, _ = nodes_neighbors
    concepts = ConceptSet.from_text("boat")
    out = module.CARESuggestCareSet.execute(
        None, None, concepts, "risk", "extra concepts only", "{}", 2, 0.5, 0.0,
        extra_concepts="water\nharbour\nsailing boat\ntree",
    )
    care, near, table = out.args
    assert 1 <= len(care.splitlines()) <= 2 and "sailing boat" not in care and "boat" not in care.split()
    merged = ConceptSet.from_text("boat", care=care)  # the output is valid concept-set text
    assert all(r.care for r in merged.retained)
    assert "sailing boat" in table and out.ui == table
    with pytest.raises(ValueError, match="no extra concept"):
        module.CARESuggestCareSet.execute(None, None, concepts, "text", "extra concepts only", "{}", 2, 0.5, 0.0)


def test_scan_node_reads_the_erasure_and_ranks_the_vocabulary(nodes_neighbors) -> None:
    module, enc, sites = nodes_neighbors
    result = erase(sites, enc, ConceptSet.from_text("boat"))
    erasure = types.SimpleNamespace(delta=result.delta, report=result.report)
    out = module.CARERiskScan.execute(None, None, erasure, "extra concepts only", "{}", 3,
                                      extra_concepts="water, tree, house, boat, a boat on water")
    care, table, js = out.args
    assert len(care.splitlines()) == 3 and "boat" not in care
    assert "contains target" in table and '"excluded"' in js


def test_vocabulary_choice_merges_shipped_and_extra(nodes_neighbors) -> None:
    module, _, _ = nodes_neighbors
    vocab = module._vocabulary("animals", "my own thing")
    assert "my own thing" in vocab.concepts and "tench" in vocab.concepts
    assert module._vocab_choices()[0] == "all" and "animals" in module._vocab_choices()


def test_vocabulary_cache_key_follows_the_clip_layer_and_weights(monkeypatch) -> None:
    """Two CLIPs that encode differently must not share cached vocabulary encodings: clip skip
    ("CLIP Set Last Layer") changes the vectors without changing a weight."""
    import torch

    comfy_stub.install(monkeypatch)
    module = comfy_stub.fresh_import("nodes.neighbors")
    try:
        weights = torch.nn.Linear(4, 4)

        def clip(layer_idx, model=weights):
            return types.SimpleNamespace(
                tokenize=lambda text: text, encode_from_tokens=lambda tokens, **kw: None,
                cond_stage_model=model, layer_idx=layer_idx,
            )

        def fingerprint(c) -> str:
            return module._encoder(c).fingerprint()

        assert fingerprint(clip(None)) == fingerprint(clip(None))
        assert fingerprint(clip(-2)) != fingerprint(clip(None))
        assert fingerprint(clip(None, torch.nn.Linear(4, 4))) != fingerprint(clip(None))
    finally:
        comfy_stub.forget("nodes.neighbors")
