"""nodes.adapters without ComfyUI: fakes stand in for ComfyUI's CLIP/MODEL objects only at the edge.

The fake CLIP reproduces what the adapters rely on in ComfyUI 0.3.64 (checked against the real thing by
the integration tests): ``tokenize(text, return_word_ids=True, disable_weights=True)`` returns, per
tokenizer key, chunks of ``(token, weight, word_id)`` with word id 0 for start/end/padding tokens; and
``encode_from_tokens`` encodes every chunk as one batch and concatenates the chunks along the tokens
(SDXL: ``l`` and ``g`` side by side in width; SD3: CLIP rows then T5 rows; FLUX: T5 rows only).
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from erasure.concepts import ConceptSet
from erasure.erase import EraseSettings, erase
from erasure.vectors import TextEncoder
from nodes import adapters

# --------------------------------------------------------------------------------------------- fake CLIP


def _word_ids(word: str) -> list[int]:
    """A toy BPE: words up to 5 letters are one token, longer words two."""
    h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little") % 40000 + 100
    return [h] if len(word) <= 5 else [h, h + 1]


class FakeTokenizer:
    def __init__(self, start: int | None, end: int, pad: int, length: int):
        self.start, self.end, self.pad, self.length = start, end, pad, length

    def __call__(self, text: str) -> list[list[tuple]]:
        content = [t for w in text.split() for t in _word_ids(w)]
        room = self.length - (self.start is not None) - 1
        chunks = []
        while True:
            piece, content = content[:room], content[room:]
            chunk = ([(self.start, 1.0, 0)] if self.start is not None else []) + [(t, 1.0, 1) for t in piece]
            chunk.append((self.end, 1.0, 0))
            chunk += [(self.pad, 1.0, 0)] * (self.length - len(chunk))
            chunks.append(chunk)
            if not content:
                return chunks


class FakeEncoderPart:
    """Causal (CLIP-like) or bidirectional (T5-like) encoder of one tokenizer key's chunks."""

    def __init__(self, width: int, causal: bool, seed: int):
        self.width, self.causal, self.seed = width, causal, seed

    def embed(self, token: int, pos: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(token) * 131 + pos)
        return torch.randn(self.width, generator=g)

    def encode_chunk(self, chunk: list[tuple]) -> torch.Tensor:
        e = torch.stack([self.embed(t[0], i) for i, t in enumerate(chunk)])
        if self.causal:
            out, state = [], torch.zeros(self.width)
            for row in e:
                state = 0.5 * state + row
                out.append(state.clone())
            return torch.stack(out)
        return e + e.mean(0, keepdim=True)  # every position sees every other one

    def encode(self, chunks: list[list[tuple]]) -> torch.Tensor:
        return torch.cat([self.encode_chunk(c) for c in chunks])  # chunks concatenated along tokens


class FakeClip:
    """Layouts: 'sd1' (l, 16 wide), 'sdxl' (l 16 + g 24 = 40 wide), 'sd3' (l+g padded to 48, then t5), 'flux' (t5)."""

    def __init__(self, layout: str = "sd1", length: int = 12):
        self.layout = layout
        self.calls = 0
        clip_tok = FakeTokenizer(start=49406, end=49407, pad=49407, length=length)
        t5_tok = FakeTokenizer(start=None, end=1, pad=0, length=length + 4)
        self.tokenizers = {
            "sd1": {"l": clip_tok},
            "sdxl": {"g": clip_tok, "l": clip_tok},
            "sd3": {"l": clip_tok, "g": clip_tok, "t5xxl": t5_tok},
            "flux": {"l": clip_tok, "t5xxl": t5_tok},
        }[layout]
        self.parts = {
            "l": FakeEncoderPart(16, True, 1),
            "g": FakeEncoderPart(24, True, 2),
            "t5xxl": FakeEncoderPart(48, False, 3),
        }

    def tokenize(self, text: str, return_word_ids: bool = False, **kwargs) -> dict:
        assert kwargs.get("disable_weights") is True
        out = {k: tok(text) for k, tok in self.tokenizers.items()}
        if not return_word_ids:
            out = {k: [[t[:2] for t in c] for c in v] for k, v in out.items()}
        return out

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        self.calls += 1
        for chunks in tokens.values():
            assert all(len(t) == 2 for c in chunks for t in c), "word ids must be stripped before encoding"
        if self.layout == "sd1":
            cond = self.parts["l"].encode(tokens["l"])
        elif self.layout == "sdxl":
            cond = torch.cat([self.parts["l"].encode(tokens["l"]), self.parts["g"].encode(tokens["g"])], dim=-1)
        elif self.layout == "sd3":
            lg = torch.cat([self.parts["l"].encode(tokens["l"]), self.parts["g"].encode(tokens["g"])], dim=-1)
            lg = torch.nn.functional.pad(lg, (0, 48 - lg.shape[-1]))
            cond = torch.cat([lg, self.parts["t5xxl"].encode(tokens["t5xxl"])])
        else:
            cond = self.parts["t5xxl"].encode(tokens["t5xxl"])
        cond = cond[None]
        return (cond, None) if return_pooled else cond


# --------------------------------------------------------------------------------------------- fake MODEL
class SD15:  # names match ComfyUI's comfy.supported_models classes
    pass


class SDXL:
    pass


class SSD1B(SDXL):
    pass


class Flux:
    pass


class WAN21:
    pass


class _Attn(torch.nn.Module):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.to_q = torch.nn.Linear(out, out, bias=False)
        self.to_k = torch.nn.Linear(width, out, bias=False)
        self.to_v = torch.nn.Linear(width, out, bias=False)


class _Block(torch.nn.Module):
    def __init__(self, width: int, out: int):
        super().__init__()
        self.attn1 = _Attn(out, out)
        self.attn2 = _Attn(width, out)


class FakeUNet(torch.nn.Module):
    def __init__(self, width: int = 16, outs=(8, 12)):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([_Block(width, o) for o in outs])


class FakeFluxDenoiser(torch.nn.Module):
    def __init__(self, width: int = 48):
        super().__init__()
        self.txt_in = torch.nn.Linear(width, 20)
        self.img_in = torch.nn.Linear(4, 20)


class FakeBaseModel:
    def __init__(self, config, diffusion_model):
        self.model_config = config
        self.diffusion_model = diffusion_model


class FakeModelPatcher:
    def __init__(self, config, diffusion_model):
        self.model = FakeBaseModel(config, diffusion_model)
        self.patches = {}


def sd15_model(width: int = 16) -> FakeModelPatcher:
    torch.manual_seed(0)
    return FakeModelPatcher(SD15(), FakeUNet(width))


# --------------------------------------------------------------------------------------------- families
@pytest.mark.parametrize(
    "config,label,kind", [(SD15(), "SD1.x", "unet"), (SSD1B(), "SDXL", "unet"), (Flux(), "FLUX", "mmdit")]
)
def test_family_from_model_config_class_hierarchy(config, label, kind):
    fam = adapters.model_family(FakeModelPatcher(config, FakeUNet()))
    assert (fam.label, fam.kind) == (label, kind)


def test_unsupported_family_is_named():
    with pytest.raises(adapters.AdapterError, match="'WAN21' is not supported"):
        adapters.model_family(FakeModelPatcher(WAN21(), FakeUNet()))


def test_object_without_model_config_is_refused():
    with pytest.raises(adapters.AdapterError, match="no model_config"):
        adapters.model_family(object())


def test_site_choices_per_family():
    unet = adapters.FAMILIES["SD15"]
    mmdit = adapters.FAMILIES["Flux"]
    assert adapters.site_selection(unet, "auto") == "unet_kv"
    assert adapters.site_selection(unet, "keys") == "unet_k"
    assert adapters.site_selection(mmdit, "auto") == "mmdit"
    with pytest.raises(adapters.AdapterError, match="does not apply to a FLUX model"):
        adapters.site_selection(mmdit, "values")
    with pytest.raises(adapters.AdapterError, match="does not apply to a SD1.x model"):
        adapters.site_selection(unet, "text projection")


# --------------------------------------------------------------------------------------------- sites
def test_unet_sites_are_attn2_keys_values_read_in_place():
    model = sd15_model()
    fam, sites = adapters.model_edit_sites(model)
    names = [s.name for s in sites]
    assert names == [
        "input_blocks.0.attn2.to_k", "input_blocks.0.attn2.to_v",
        "input_blocks.1.attn2.to_k", "input_blocks.1.attn2.to_v",
    ]  # fmt: skip
    weight = model.model.diffusion_model.input_blocks[1].attn2.to_v.weight
    assert sites[3].weight.data_ptr() == weight.data_ptr()  # a view, never a copy...
    assert {s.in_features for s in sites} == {16}
    _, keys = adapters.model_edit_sites(model, "keys")
    assert [s.name for s in keys] == names[0::2]


def test_flux_site_is_txt_in_with_bias():
    model = FakeModelPatcher(Flux(), FakeFluxDenoiser())
    fam, sites = adapters.model_edit_sites(model)
    assert fam.label == "FLUX" and [s.name for s in sites] == ["txt_in"]
    assert sites[0].bias is not None and sites[0].in_features == 48


def test_patched_weights_replace_only_patched_sites():
    model = sd15_model()
    key = "diffusion_model.input_blocks.0.attn2.to_k.weight"
    _, sites = adapters.model_edit_sites(model, patched_weight=lambda k, w: w * 2 if k == key else None)
    original = model.model.diffusion_model.input_blocks[0].attn2.to_k.weight
    assert torch.equal(sites[0].weight, original * 2)
    assert sites[1].weight is not None and sites[1].weight.data_ptr() != sites[0].weight.data_ptr()
    assert adapters.patched_weight_fn(model)("anything", original) is None  # no patches -> keep the tensor


def test_clip_width_must_match_model():
    model = sd15_model(width=16)
    fam, sites = adapters.model_edit_sites(model)
    adapters.check_widths(adapters.ComfyTextEncoder(FakeClip("sd1")), sites, fam)
    with pytest.raises(adapters.AdapterError, match=r"40-wide token vectors .* SD1.x MODEL.* read width 16"):
        adapters.check_widths(adapters.ComfyTextEncoder(FakeClip("sdxl")), sites, fam)


# --------------------------------------------------------------------------------------------- text
def _content(tokens, key):
    return [t[0] for c in tokens[key] for t in c]


def test_encoder_satisfies_engine_protocol_and_width():
    enc = adapters.ComfyTextEncoder(FakeClip("sdxl"))
    assert isinstance(enc, TextEncoder)
    assert enc.width == 40


def test_not_a_clip_is_refused():
    with pytest.raises(adapters.AdapterError, match="not a ComfyUI CLIP"):
        adapters.ComfyTextEncoder(object())


@pytest.mark.parametrize("layout", ["sd1", "sdxl"])
def test_phrase_and_tail_positions_clip(layout):
    enc = adapters.ComfyTextEncoder(FakeClip(layout))
    # "photograph" is two tokens, so positions are token positions, not word positions
    [p] = enc.encode(["a photograph of a sailing boat on water"], ["sailing boat"])
    # BOS a photo graph of a | sailing(2) boat | on water EOS
    assert p.phrase.tolist() == [6, 7, 8]
    assert p.tail.tolist() == [9, 10, 11]  # "on", "water", end-of-text
    assert p.vectors.shape == (12, enc.width) and p.vectors.dtype == torch.float32


def test_phrase_at_start_and_empty_phrase():
    enc = adapters.ComfyTextEncoder(FakeClip("sd1"))
    start, empty, nothing = enc.encode(["boat in a harbour", "a photo of", ""], ["boat", "", ""])
    assert start.phrase.tolist() == [1] and start.tail.tolist() == [2, 3, 4, 5, 6]
    assert empty.phrase.tolist() == [] and empty.tail.tolist() == [4]  # end-of-text after "of"
    assert nothing.phrase.tolist() == [] and nothing.tail.tolist() == [1]  # BOS, then end-of-text


def test_missing_phrase_is_an_error():
    enc = adapters.ComfyTextEncoder(FakeClip("sd1"))
    with pytest.raises(adapters.AdapterError, match="does not occur"):
        enc.encode(["a photo of a cat"], ["dog"])


def test_vectors_are_what_the_sampler_gets_and_batching_changes_nothing():
    clip = FakeClip("sd1")
    prompts = ["a photo of a cat", "a boat", "water", "a photograph of a harbour"]
    phrases = ["cat", "boat", "water", "harbour"]
    batched = adapters.ComfyTextEncoder(clip, batch_size=8).encode(prompts, phrases)
    calls_batched = clip.calls
    single = adapters.ComfyTextEncoder(clip, batch_size=1).encode(prompts, phrases)
    assert calls_batched == 1  # one encode call for the four prompts
    for b, s, prompt in zip(batched, single, prompts):
        assert torch.equal(b.vectors, s.vectors)
        direct = clip.encode_from_tokens(clip.tokenize(prompt, disable_weights=True))[0]
        assert torch.equal(b.vectors, direct)  # exactly CLIPTextEncode's conditioning rows


def test_sd3_phrase_found_in_clip_and_t5_rows():
    enc = adapters.ComfyTextEncoder(FakeClip("sd3"))
    a, b = enc.encode(["a photo of a boat", "a boat"], ["boat", "boat"])
    # CLIP rows 0..11 (BOS a photo of a boat EOS ...), then T5 rows 12..27 (a photo of a boat </s> ...)
    assert a.phrase.tolist() == [5, 12 + 4]
    assert a.tail.tolist() == [6, 12 + 5]
    assert a.vectors.shape == (12 + 16, 48)
    single = adapters.ComfyTextEncoder(FakeClip("sd3"), batch_size=1).encode(["a boat"], ["boat"])[0]
    assert torch.equal(b.vectors, single.vectors)  # the batched SD3 split is right


def test_flux_rows_are_t5_tokens():
    enc = adapters.ComfyTextEncoder(FakeClip("flux"))
    [p] = enc.encode(["a boat on water"], ["boat"])
    assert p.vectors.shape == (16, 48)
    assert p.phrase.tolist() == [1] and p.tail.tolist() == [2, 3, 4]  # no start token in T5
    [empty] = enc.encode([""], [""])
    assert empty.phrase.tolist() == [] and empty.tail.tolist() == [0]  # </s> comes first


def test_long_prompt_spanning_chunks():
    clip = FakeClip("sd1", length=6)  # 4 content tokens per chunk
    enc = adapters.ComfyTextEncoder(clip)
    [p] = enc.encode(["one two three four five six boat"], ["boat"])
    # chunk 0: BOS one two three four EOS | chunk 1: BOS five six boat EOS pad
    assert p.vectors.shape == (12, 16)
    assert p.phrase.tolist() == [9] and p.tail.tolist() == [10]


def test_on_batch_hook_sees_progress_and_can_interrupt():
    seen = []
    enc = adapters.ComfyTextEncoder(FakeClip("sd1"), batch_size=2, on_batch=lambda d, t: seen.append((d, t)))
    enc.encode(["a", "b", "c"], ["a", "b", "c"])
    assert seen == [(2, 3), (3, 3)]

    def stop(done, total):
        raise InterruptedError

    with pytest.raises(InterruptedError):
        adapters.ComfyTextEncoder(FakeClip("sd1"), on_batch=stop).encode(["a"], ["a"])


# --------------------------------------------------------------------------------------------- engine
def test_engine_erases_through_the_adapters_and_exports_comfy_keys():
    model = sd15_model()
    fam, sites = adapters.model_edit_sites(model)
    before = {s.name: s.weight.clone() for s in sites}
    enc = adapters.ComfyTextEncoder(FakeClip("sd1"))
    adapters.check_widths(enc, sites, fam)
    concepts = ConceptSet.from_text("boat", retained="dog\ntree", care="water", templates="{}\na photo of {}")
    result = erase(sites, enc, concepts, EraseSettings(lam=0.1))
    assert set(result.delta.updates) == {s.name for s in sites}
    for s in sites:  # the MODEL's weights were only read
        assert torch.equal(s.weight, before[s.name])
    lora = result.delta.lora_state_dict("comfy")
    state = adapters.diffusion_state_dict(model)
    for key in lora:
        if key.endswith(".lora_up.weight"):
            assert key.replace(".lora_up.weight", ".weight") in state  # ComfyUI's generic LoRA key
    assert result.report.targets[0].residual < 0.5
    assert max(r.drift for r in result.report.retained) < 0.5


# --------------------------------------------------------------------------------------------- truncation
class _Embeddings(torch.nn.Module):
    def __init__(self, length: int, width: int):
        super().__init__()
        self.position_embedding = torch.nn.Embedding(length, width)


class _CausalText(torch.nn.Module):
    def __init__(self, length: int, width: int):
        super().__init__()
        self.embeddings = _Embeddings(length, width)


class SD1ClipModel(torch.nn.Module):
    """Named like ComfyUI's class: a causal CLIP whose position table must match the sequence length."""

    clip_name = "l"

    def __init__(self, length: int, width: int = 16):
        super().__init__()
        self.clip_l = torch.nn.Module()
        self.clip_l.transformer = torch.nn.Module()
        self.clip_l.transformer.text_model = _CausalText(length, width)


class FakeCausalClip(FakeClip):
    def __init__(self, length: int = 12):
        super().__init__("sd1", length)
        torch.manual_seed(1)
        self.cond_stage_model = SD1ClipModel(length)
        self.loads = 0

    def load_model(self):
        self.loads += 1

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False):
        cond = super().encode_from_tokens(tokens)
        table = self.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight
        n = len(tokens["l"][0])
        return cond + table.repeat(len(tokens["l"]), 1)[None] * (table.shape[0] == n or float("nan"))


def test_truncated_rows_equal_full_rows_and_the_clip_is_left_as_it_was():
    clip = FakeCausalClip()
    table = clip.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight
    saved = table.detach().clone()
    prompts = ["a photo of a boat on water", "boat", "a photo of", ""]
    phrases = ["boat", "boat", "", ""]
    full = adapters.ComfyTextEncoder(clip).encode(prompts, phrases)
    enc = adapters.ComfyTextEncoder(clip, truncate=True)
    assert enc.truncating
    short = enc.encode(prompts, phrases)
    # BOS a photo of a boat on water EOS -> 9 rows; the others are cut at the same length
    assert [s.vectors.shape[0] for s in short] == [9, 9, 9, 9]
    for s, f in zip(short, full):
        assert torch.equal(s.phrase, f.phrase) and torch.equal(s.tail, f.tail)
        assert torch.allclose(s.vectors, f.vectors[: s.vectors.shape[0]])
    # the length never shrinks: a later, shorter prompt keeps the rows an earlier target needed
    [later] = enc.encode(["sea"], ["sea"])
    assert later.vectors.shape[0] == 9
    assert clip.cond_stage_model.clip_l.transformer.text_model.embeddings.position_embedding.weight is table
    assert torch.equal(table, saved) and clip.loads >= 1


def test_no_truncation_for_t5_layouts_or_long_prompts():
    assert not adapters.ComfyTextEncoder(FakeClip("sd3"), truncate=True).truncating
    clip = FakeCausalClip(length=6)
    enc = adapters.ComfyTextEncoder(clip, truncate=True)
    [p] = enc.encode(["one two three four five six boat"], ["boat"])  # two chunks: encoded whole
    assert p.vectors.shape[0] == 12 and p.phrase.tolist() == [9]
