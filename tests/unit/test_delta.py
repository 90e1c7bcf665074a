"""Deltas: exact LoRA export in ComfyUI and kohya keys, diff export, safe writes, dtypes, determinism."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from erasure.concepts import ConceptSet
from erasure.delta import Delta, DeltaError, LowRankUpdate, load_delta
from erasure.erase import EraseSettings, erase
from tests.fakes import WordHashEncoder, random_sites

CONCEPTS = ConceptSet.from_text("boat\nfish -> bird", retained="tree\nsun", care="water")


@pytest.fixture
def result():
    return erase(random_sites(), WordHashEncoder(), CONCEPTS, EraseSettings())


def reference_delta(sites, concepts=CONCEPTS, settings=EraseSettings()) -> dict[str, torch.Tensor]:
    """W' - W computed densely in float64 from the same problem (independent of the LoRA factors)."""
    from erasure.erase import concept_vectors
    from erasure.solve import InputSpaceProblem, solve_input_space

    v = concept_vectors(WordHashEncoder(), concepts, settings)
    p = InputSpaceProblem.build(v.targets.double(), v.anchors.double(), v.retained.double(),
                                retained_weights=v.retained_weights)
    e = solve_input_space(p, settings.lam)
    return {s.name: s.weight.double() @ e.left @ e.right.T for s in sites}


@pytest.mark.parametrize("key_format", ["comfy", "kohya"])
def test_lora_file_reconstructs_delta(tmp_path, result, key_format) -> None:
    sites = random_sites()
    path = result.delta.save_lora(tmp_path / "e.safetensors", key_format=key_format)
    loaded = load_delta(path, site_names=[s.name for s in sites])
    ref = reference_delta(sites)
    assert set(loaded.updates) == set(ref)
    for name, dense in ref.items():
        rel = torch.linalg.norm(loaded.updates[name].dense() - dense) / torch.linalg.norm(dense)
        assert rel < 1e-5, (name, float(rel))


def test_comfy_keys_and_alpha(tmp_path, result) -> None:
    tensors = load_file(result.delta.save_lora(tmp_path / "e.safetensors"))
    name = "blocks.0.attn2.to_k"
    up = tensors[f"diffusion_model.{name}.lora_up.weight"]
    down = tensors[f"diffusion_model.{name}.lora_down.weight"]
    assert up.shape[1] == down.shape[0] == int(tensors[f"diffusion_model.{name}.alpha"])
    assert up.dtype == torch.float32


def test_kohya_keys(tmp_path, result) -> None:
    tensors = load_file(result.delta.save_lora(tmp_path / "e.safetensors", key_format="kohya"))
    assert "lora_unet_blocks_1_attn2_to_v.lora_down.weight" in tensors


def test_diff_file_round_trip(tmp_path, result) -> None:
    path = result.delta.save_diff(tmp_path / "d.safetensors")
    loaded = load_delta(path)
    for name, update in result.delta.updates.items():
        assert torch.allclose(loaded.updates[name].dense(), update.dense(), rtol=1e-5, atol=1e-6)


def test_metadata_records_the_erasure(tmp_path, result) -> None:
    loaded = load_delta(result.delta.save_lora(tmp_path / "e.safetensors"))
    md = loaded.metadata
    assert ConceptSet.from_json(md["concepts"]) == CONCEPTS
    assert md["method"] == "closed_form" and md["format"] == "lora-comfy"
    assert '"bird"' in md["anchors"] and "lam" in md["settings"]


def test_same_inputs_give_identical_bytes(tmp_path) -> None:
    digests = []
    for i in range(2):
        r = erase(random_sites(), WordHashEncoder(), CONCEPTS, EraseSettings(strict=True))
        path = r.delta.save_lora(tmp_path / f"e{i}.safetensors")
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_refuses_to_overwrite_and_keeps_the_file(tmp_path, result) -> None:
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"precious")
    with pytest.raises(DeltaError, match="already exists"):
        result.delta.save_lora(path)
    assert path.read_bytes() == b"precious"
    result.delta.save_lora(path, overwrite=True)
    assert load_delta(path).updates.keys() == result.delta.updates.keys()
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("name, message", [("e.ckpt", "safetensors"), ("missing/e.safetensors", "does not exist")])
def test_bad_paths_are_refused(tmp_path, result, name, message) -> None:
    with pytest.raises(DeltaError, match=message):
        result.delta.save_lora(tmp_path / name)


def test_loading_garbage_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(DeltaError, match="not a readable safetensors"):
        load_delta(bad)
    with pytest.raises(DeltaError, match="no erasure file"):
        load_delta(tmp_path / "none.safetensors")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(dtype) -> None:
    sites = random_sites(dtype=dtype)
    r = erase(sites, WordHashEncoder(), CONCEPTS, EraseSettings())
    weights = {s.name: s.weight for s in sites}
    originals = {n: w.clone() for n, w in weights.items()}
    new = r.delta.apply(weights)
    ref = reference_delta([type(s)(s.name, s.weight.double()) for s in sites])
    tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for name, w in new.items():
        assert w.dtype == dtype and torch.isfinite(w).all()
        expected = weights[name].double() + ref[name]
        assert torch.linalg.norm(w.double() - expected) / torch.linalg.norm(expected) < tol
        assert torch.equal(weights[name], originals[name])  # inputs untouched


def test_apply_refuses_a_delta_for_another_model() -> None:
    delta = Delta({"x": LowRankUpdate(torch.ones(4, 1), torch.ones(1, 3))})
    with pytest.raises(DeltaError, match="another model"):
        delta.apply({"x": torch.zeros(4, 5)})
    with pytest.raises(DeltaError, match="no weight"):
        delta.apply({"y": torch.zeros(4, 3)})


def test_inverted_delta_undoes_the_edit(result) -> None:
    sites = random_sites()
    weights = {s.name: s.weight.double() for s in sites}
    edited = result.delta.apply(weights)
    restored = result.delta.inverted().apply(edited)
    for name in weights:
        assert torch.allclose(restored[name], weights[name], atol=1e-6)
