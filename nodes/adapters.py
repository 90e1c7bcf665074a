"""ComfyUI objects -> engine objects: a MODEL's text-reading maps as EditSites, a CLIP as a TextEncoder.

No maths lives here: the functions only find tensors, tokenize and encode through ComfyUI's own CLIP
object, and map token positions. ComfyUI itself is imported lazily (inside the functions that need it),
so the unit tests drive this module with small fakes at the ComfyUI edge.

* :func:`model_family` reads ``model.model.model_config`` (ComfyUI's ``supported_models`` class) and
  names the family: SD1.x, SD2.x, SDXL (attn2 ``to_k``/``to_v``), SD3 (``context_embedder``) or FLUX
  (``txt_in``). Any other family is refused with a message naming it.
* :func:`model_edit_sites` returns the engine's :class:`EditSite` list for the chosen sites. Weights are
  read from ``model.model.diffusion_model`` without being modified; where the MODEL already carries
  patches on a site (a LoRA loaded before the erasure), the site holds a *copy* of the patched weight,
  so the erasure is computed against what the sampler would actually use.
* :class:`ComfyTextEncoder` implements ``erasure.vectors.TextEncoder`` with ``clip.tokenize`` and
  ``clip.encode_from_tokens``: it encodes each prompt (batched when the token layouts agree) and locates
  the phrase's tokens by tokenizing the text before the phrase and the text up to its end.
* :func:`check_widths` refuses a CLIP whose token width differs from the MODEL's edit-site width.
* :func:`patched_clone` applies a LoRA state dict exactly as the stock ``LoraLoader`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .engine import sites as _sites
from .engine import vectors as _vectors

DIFFUSION_PREFIX = "diffusion_model."


class AdapterError(ValueError):
    """A MODEL/CLIP combination the pack cannot work with; the message tells the user what to change."""


# --------------------------------------------------------------------------------------------- families
@dataclass(frozen=True)
class Family:
    label: str  # shown to users
    kind: str  # "unet" (cross-attention keys/values) or "mmdit" (one text projection)
    sites: str  # what is edited, in words


FAMILIES: dict[str, Family] = {
    # ComfyUI comfy.supported_models class name -> family. Subclasses (SSD1B, SD21UnclipL, FluxSchnell,
    # SD15_instructpix2pix...) are matched through their class hierarchy.
    "SD15": Family("SD1.x", "unet", "attn2.to_k / attn2.to_v"),
    "SD20": Family("SD2.x", "unet", "attn2.to_k / attn2.to_v"),
    "SDXL": Family("SDXL", "unet", "attn2.to_k / attn2.to_v"),
    "SDXLRefiner": Family("SDXL", "unet", "attn2.to_k / attn2.to_v"),
    "SD3": Family("SD3", "mmdit", "context_embedder"),
    "Flux": Family("FLUX", "mmdit", "txt_in"),
}

# Node-facing site choices -> engine selection (erasure.sites.SITE_PATTERNS), per family kind.
SITE_CHOICES: tuple[str, ...] = ("auto", "keys+values", "keys", "values", "text projection")
_SELECTION = {
    ("unet", "auto"): "unet_kv",
    ("unet", "keys+values"): "unet_kv",
    ("unet", "keys"): "unet_k",
    ("unet", "values"): "unet_v",
    ("mmdit", "auto"): "mmdit",
    ("mmdit", "text projection"): "mmdit",
}


def _config_of(model) -> object:
    """``model.model.model_config`` of a ModelPatcher (or of a BaseModel given directly)."""
    inner = getattr(model, "model", model)
    config = getattr(inner, "model_config", None)
    if config is None:
        raise AdapterError(
            f"this MODEL ({type(inner).__name__}) has no model_config; connect the MODEL output of a checkpoint "
            f"or diffusion-model loader"
        )
    return config


def model_family(model) -> Family:
    """The supported family of a ComfyUI MODEL, or an :class:`AdapterError` naming the family found."""
    config = _config_of(model)
    for cls in type(config).__mro__:
        if cls.__name__ in FAMILIES:
            return FAMILIES[cls.__name__]
    supported = "SD1.x, SD2.x, SDXL, SD3, FLUX"
    raise AdapterError(
        f"model family '{type(config).__name__}' is not supported by CARE erasure (supported: {supported})"
    )


def site_selection(family: Family, choice: str) -> str:
    """Engine site selection for a node's ``sites`` choice, or an error saying which choices fit."""
    key = (family.kind, choice)
    if key not in _SELECTION:
        fits = [c for (k, c) in _SELECTION if k == family.kind]
        raise AdapterError(
            f"sites '{choice}' does not apply to a {family.label} model (it edits {family.sites}); choose one of:"
            f" {', '.join(fits)}"
        )
    return _SELECTION[key]


# --------------------------------------------------------------------------------------------- sites
def diffusion_state_dict(model) -> dict[str, torch.Tensor]:
    """The denoiser's tensors keyed ``diffusion_model.<path>`` (references, never modified)."""
    inner = getattr(model, "model", model)
    dm = getattr(inner, "diffusion_model", None)
    if dm is None:
        raise AdapterError("this MODEL has no diffusion_model; connect a diffusion MODEL")
    return {DIFFUSION_PREFIX + k: v for k, v in dm.state_dict(keep_vars=False).items()}


def model_edit_sites(
    model,
    choice: str = "auto",
    patched_weight: Callable[[str, torch.Tensor], torch.Tensor | None] | None = None,
) -> tuple[Family, list]:
    """The family and the engine's EditSites of ``model`` for the node choice ``choice``.

    ``patched_weight(key, weight)`` (ComfyUI glue) may return a patched copy of a weight that carries
    patches on the MODEL; ``None`` keeps the original tensor.
    """
    family = model_family(model)
    selection = site_selection(family, choice)
    state = diffusion_state_dict(model)
    try:
        found = _sites.discover_sites(state, selection, prefix=DIFFUSION_PREFIX)
    except _sites.SiteError as err:
        raise AdapterError(f"{family.label} MODEL: {err}") from err
    if patched_weight is None:
        return family, found
    out = []
    for site in found:
        key = f"{DIFFUSION_PREFIX}{site.name}.weight"
        weight = patched_weight(key, site.weight)
        out.append(site if weight is None else _sites.EditSite(site.name, weight, site.bias))
    return family, out


def check_widths(encoder, edit_sites: Sequence, family: Family, clip_name: str | None = None) -> None:
    """Refuse a CLIP whose token width is not the width the MODEL's edit sites read."""
    widths = sorted({s.in_features for s in edit_sites})
    width = int(encoder.width)
    if widths != [width]:
        clip_label = clip_name or getattr(encoder, "name", type(encoder).__name__)
        raise AdapterError(
            f"CLIP '{clip_label}' gives {width}-wide token vectors but the {family.label} MODEL's "
            f"{family.sites} read width {', '.join(map(str, widths))}; connect the CLIP that was loaded with this MODEL"
        )


# --------------------------------------------------------------------------------------------- text
TokenDict = Mapping[str, list]  # tokenizer key -> chunks -> (token, weight, word_id)


def _flat(tokens: TokenDict, key: str) -> list[tuple]:
    return [t for chunk in tokens[key] for t in chunk]


def _content_ids(flat: Sequence[tuple]) -> list:
    """Token ids of the words (word id > 0); start, end and padding tokens carry word id 0."""
    return [_token_id(t[0]) for t in flat if len(t) > 2 and t[2] > 0]


def _token_id(token) -> object:
    if isinstance(token, torch.Tensor):  # an embedding vector stands in for a token
        return ("embedding", token.shape[-1], float(token.float().sum()))
    return int(token)


@dataclass(frozen=True)
class _Segment:
    key: str  # tokenizer key whose tokens give the rows
    offset: int  # first row of this segment in the encoder output


def _class_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _layout(tokens: TokenDict, rows: int, text_model=None) -> list[_Segment]:
    """Which tokenizer key's tokens the ``rows`` output rows correspond to.

    Read from the CLIP's text model class when it is one ComfyUI 0.3.64 has (``text_model`` is
    ``clip.cond_stage_model``): SD1.x/SD2.x/SDXL-refiner one CLIP (``l``/``h``/``g``), SDXL ``l`` and ``g``
    side by side in width, SD3 CLIP rows (``l``/``g``, whichever are loaded) then T5 rows, FLUX T5 rows.
    Otherwise: the one key whose flattened length is ``rows``, or CLIP rows followed by T5 rows.
    """
    lengths = {k: len(_flat(tokens, k)) for k in tokens}
    names = _class_names(text_model) if text_model is not None else set()
    segments: list[_Segment] | None = None
    if "SD3ClipModel" in names:
        segments, offset = [], 0
        loaded = [k for k, attr in (("l", "clip_l"), ("g", "clip_g")) if getattr(text_model, attr, None) is not None]
        if loaded:
            segments.append(_Segment(loaded[0], 0))
            offset = min(lengths[k] for k in loaded)
        if getattr(text_model, "t5xxl", None) is not None:
            segments.append(_Segment("t5xxl", offset))
            offset += lengths["t5xxl"]
        if offset != rows:
            segments = None
    elif "FluxClipModel" in names and lengths.get("t5xxl") == rows:
        segments = [_Segment("t5xxl", 0)]
    elif "SDXLClipModel" in names and lengths.get("l") == rows:
        segments = [_Segment("l", 0)]
    elif "SD1ClipModel" in names and lengths.get(getattr(text_model, "clip_name", ""), -1) == rows:
        segments = [_Segment(text_model.clip_name, 0)]
    if segments:
        return segments
    for key in ("l", "g", "h", "t5xxl", *sorted(tokens)):
        if key in lengths and lengths[key] == rows:
            return [_Segment(key, 0)]
    clip_keys = [k for k in ("l", "g") if k in lengths and lengths[k] > 0]
    if "t5xxl" in lengths and clip_keys:
        clip_len = min(lengths[k] for k in clip_keys)
        if clip_len + lengths["t5xxl"] == rows:
            return [_Segment(clip_keys[0], 0), _Segment("t5xxl", clip_len)]
    raise AdapterError(
        f"cannot map the text encoder's {rows} output tokens to its tokenizer output "
        f"({', '.join(f'{k}: {n}' for k, n in lengths.items())}); this CLIP type is not supported"
    )


# Causal CLIP text models: the row of a token depends only on the tokens before it, so rows up to
# end-of-text are the same in a shorter sequence (see ComfyTextEncoder's ``truncate``).
CAUSAL_TEXT_MODELS = ("SD1ClipModel", "SDXLClipModel")
POSITION_EMBEDDING = "embeddings.position_embedding.weight"


class _Invoke(torch.nn.Module):
    """Holds a text model as a submodule so ``torch.func.functional_call`` can substitute its tensors."""

    def __init__(self, text_model: torch.nn.Module, fn: Callable[[], object]) -> None:
        super().__init__()
        self.text_model = text_model
        self._fn = fn

    def forward(self):
        return self._fn()


def _phrase_rows(full: Sequence[tuple], prefix_ids: list, upto_ids: list, lead: int = 1) -> tuple[list[int], list[int]]:
    """Positions (in ``full``) of the phrase's tokens and of the tail up to and including end-of-text.

    ``prefix_ids``/``upto_ids`` are the word-token ids of the text before the phrase and of the text up
    to the phrase's end. The phrase occupies word tokens ``[len(prefix), len(upto))`` when the full
    prompt's tokens start with ``upto``; otherwise the phrase's own ids are searched for. ``lead`` is
    the number of special tokens before the first word (1 for CLIP's start token, 0 for T5).
    """
    word_pos = [i for i, t in enumerate(full) if len(t) > 2 and t[2] > 0]
    ids = [_token_id(full[i][0]) for i in word_pos]
    start, stop = len(prefix_ids), len(upto_ids)
    if ids[:stop] != upto_ids or ids[:start] != prefix_ids:
        # tokenization differed at the boundary: find the phrase's tokens by value
        phrase_ids = upto_ids[start:]
        hits = [i for i in range(len(ids) - len(phrase_ids) + 1) if ids[i : i + len(phrase_ids)] == phrase_ids]
        if not phrase_ids or not hits:
            raise AdapterError("could not locate the concept's tokens in its prompt")
        start, stop = hits[0], hits[0] + len(phrase_ids)
    phrase = [word_pos[i] for i in range(start, stop)]
    # tail: every position after the phrase through the first end/padding token after the last word
    after = (phrase[-1] + 1) if phrase else (word_pos[start - 1] + 1 if start > 0 else lead)
    last_word = word_pos[-1] if word_pos else after - 1
    end = last_word + 1  # the end-of-text token right after the last word
    end = min(end, len(full) - 1)
    tail = list(range(after, end + 1))
    return phrase, tail


class ComfyTextEncoder:
    """``erasure.vectors.TextEncoder`` over a ComfyUI CLIP object.

    Vectors are exactly the conditioning rows the sampler gives the denoiser for that prompt (whatever
    the CLIP's layer/clip-skip settings), in float32 on the CPU. Prompts whose tokenizations have the
    same chunk lengths are encoded together, ``batch_size`` prompts per call.

    ``truncate`` (for token scopes that stop at end-of-text): with a causal CLIP (SD1.x, SD2.x, SDXL), a
    one-chunk prompt is encoded only up to the longest end-of-text position needed so far instead of all
    77 positions, which is several times faster and gives the same rows up to there. The CLIP's own
    ``encode_from_tokens`` runs; its position-embedding table is handed to it cut to that length through
    ``torch.func.functional_call`` (nothing of the CLIP is modified). The length never shrinks during
    the encoder's life, so an anchor encoded after its target always has the rows at the target's
    positions. T5 encoders (SD3, FLUX) see every position and are never truncated.
    """

    def __init__(
        self,
        clip,
        batch_size: int = 32,
        on_batch: Callable[[int, int], None] | None = None,
        name: str | None = None,
        truncate: bool = False,
    ) -> None:
        if clip is None or not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
            raise AdapterError("the CLIP input is not a ComfyUI CLIP (it needs tokenize and encode_from_tokens)")
        self.clip = clip
        self.batch_size = max(1, int(batch_size))
        self.on_batch = on_batch
        self.text_model = getattr(clip, "cond_stage_model", None)
        self.name = name or type(self.text_model if self.text_model is not None else clip).__name__
        self._width: int | None = None
        self._lead: dict[str, int] | None = None
        self._positions = self._position_tables() if truncate else {}
        self._length = 0  # rows kept so far when truncating (never shrinks)

    @property
    def truncating(self) -> bool:
        return bool(self._positions)

    # -- TextEncoder protocol
    @property
    def width(self) -> int:
        if self._width is None:
            self._width = int(self._encode([self._tokenize("")])[0][0].shape[-1])
        return self._width

    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list:
        if len(prompts) != len(phrases):
            raise ValueError("encode() needs one phrase per prompt")
        encoded = self._encode([self._tokenize(p) for p in prompts])
        out = []
        for prompt, phrase, (rows, tokens) in zip(prompts, phrases, encoded):
            self._width = int(rows.shape[-1])
            phrase_rows, tail_rows = self._locate(prompt, phrase, tokens, rows.shape[0])
            out.append(
                _vectors.EncodedPrompt(
                    rows,
                    torch.tensor(phrase_rows, dtype=torch.long),
                    torch.tensor(tail_rows, dtype=torch.long),
                )
            )
        return out

    # -- pieces
    def _tokenize(self, text: str) -> dict:
        return self.clip.tokenize(text, return_word_ids=True, disable_weights=True)

    def _locate(self, prompt: str, phrase: str, tokens: TokenDict, rows: int) -> tuple[list[int], list[int]]:
        if phrase:
            at = prompt.find(phrase)
            if at < 0:
                raise AdapterError(f"the phrase '{phrase}' does not occur in the prompt '{prompt}'")
        else:  # an empty phrase (the empty anchor) sits at the end of the prompt
            at = len(prompt.rstrip())
        before, upto = prompt[:at].rstrip(), prompt[: at + len(phrase)]
        prefix_tok, upto_tok = self._tokenize(before), self._tokenize(upto)
        lead = self._leading_specials()
        phrase_rows: list[int] = []
        tail_rows: list[int] = []
        for seg in _layout(tokens, rows, self.text_model):
            p, t = _phrase_rows(
                _flat(tokens, seg.key),
                _content_ids(_flat(prefix_tok, seg.key)),
                _content_ids(_flat(upto_tok, seg.key)),
                lead.get(seg.key, 1),
            )
            phrase_rows += [seg.offset + i for i in p]
            tail_rows += [seg.offset + i for i in t]
        return phrase_rows, tail_rows

    def _leading_specials(self) -> dict[str, int]:
        """Per tokenizer key, how many special tokens come before the first word (start token or not)."""
        if self._lead is None:
            probe = self._tokenize("a")
            self._lead = {}
            for key in probe:
                flat = _flat(probe, key)
                self._lead[key] = next((i for i, t in enumerate(flat) if len(t) > 2 and t[2] > 0), 0)
        return self._lead

    # -- truncation (causal CLIP only)
    def _position_tables(self) -> dict[str, torch.Tensor]:
        model = self.text_model
        if model is None or not (_class_names(model) & set(CAUSAL_TEXT_MODELS)):
            return {}
        return {n: p for n, p in model.named_parameters() if n.endswith(POSITION_EMBEDDING)}

    def _truncated(self, tokenized: Sequence[TokenDict]) -> list[TokenDict]:
        """The prompts cut after the longest end-of-text position needed so far (one-chunk prompts)."""
        if not self._positions or any(len(chunks) != 1 for t in tokenized for chunks in t.values()):
            return list(tokenized)
        lead = self._leading_specials()
        need = self._length
        for tokens in tokenized:
            for key, chunks in tokens.items():
                words = [i for i, t in enumerate(chunks[0]) if len(t) > 2 and t[2] > 0]
                need = max(need, (words[-1] + 2) if words else lead.get(key, 1) + 1)
        self._length = need
        return [{k: [c[0][:need]] for k, c in t.items()} for t in tokenized]

    # -- encoding
    def _encode(self, tokenized: Sequence[TokenDict]) -> list[tuple[torch.Tensor, TokenDict]]:
        """Per prompt ``([T, d] float32 CPU rows, the tokens they came from)``, batching prompts with
        identical chunk layouts."""
        tokenized = self._truncated(tokenized)
        results: list = [None] * len(tokenized)
        groups: dict[tuple, list[int]] = {}
        for i, tokens in enumerate(tokenized):
            signature = tuple((k, tuple(len(c) for c in tokens[k])) for k in sorted(tokens))
            groups.setdefault(signature, []).append(i)
        total, done = len(tokenized), 0
        for members in groups.values():
            for b in range(0, len(members), self.batch_size):
                batch = members[b : b + self.batch_size]
                for i, rows in zip(batch, self._encode_batch([tokenized[i] for i in batch])):
                    results[i] = (rows, tokenized[i])
                done += len(batch)
                if self.on_batch is not None:
                    self.on_batch(done, total)
        return results

    def _encode_batch(self, batch: Sequence[TokenDict]) -> list[torch.Tensor]:
        """ComfyUI encodes a prompt's chunks as one batch and concatenates them along the tokens, so
        prompts with equal chunk layouts can be stacked as extra chunks and split back afterwards."""
        if len(batch) > 1:
            merged = {k: [chunk for tokens in batch for chunk in _strip(tokens[k])] for k in batch[0]}
            split = self._split(self._cond(merged), batch)
            if split is not None:
                return split
        return [self._cond({k: _strip(v) for k, v in tokens.items()})[0].float().cpu() for tokens in batch]

    def _cond(self, tokens: dict) -> torch.Tensor:
        length = {len(c) for chunks in tokens.values() for c in chunks}
        if self._positions and length and max(length) < min(p.shape[0] for p in self._positions.values()):
            n = max(length)
            if hasattr(self.clip, "load_model"):
                self.clip.load_model()  # load (and patch) the CLIP before its tables are handed over
            tables = {f"text_model.{k}": p[:n] for k, p in self._positions.items()}
            cond = torch.func.functional_call(
                _Invoke(self.text_model, lambda: self.clip.encode_from_tokens(tokens)), tables, ()
            )
        else:
            cond = self.clip.encode_from_tokens(tokens)
        if isinstance(cond, (tuple, list)):
            cond = cond[0]
        if cond.ndim != 3 or cond.shape[0] != 1:
            raise AdapterError(
                f"the CLIP returned conditioning of shape {tuple(cond.shape)}; expected [1, tokens, width]"
            )
        return cond

    def _split(self, cond: torch.Tensor, batch: Sequence[TokenDict]) -> list[torch.Tensor] | None:
        """Split a batched output back per prompt, or ``None`` when its layout is not the plain stack."""
        rows = cond.shape[1]
        n = len(batch)
        if rows % n:
            return None
        per = rows // n
        try:
            segments = _layout(batch[0], per, self.text_model)
        except AdapterError:
            return None
        if len(segments) == 1:
            return [cond[0, j * per : (j + 1) * per].float().cpu() for j in range(n)]
        # CLIP rows of every prompt first, then T5 rows of every prompt (SD3)
        clip_len = segments[1].offset
        t5_len = per - clip_len
        return [
            torch.cat(
                [
                    cond[0, j * clip_len : (j + 1) * clip_len],
                    cond[0, n * clip_len + j * t5_len : n * clip_len + (j + 1) * t5_len],
                ]
            )
            .float()
            .cpu()
            for j in range(n)
        ]


def _strip(chunks: list) -> list:
    """Chunks without word ids: what ComfyUI's CLIPTextEncode hands to encode_from_tokens."""
    return [[(t[0], t[1]) for t in chunk] for chunk in chunks]


# --------------------------------------------------------------------------------------------- patches
def patched_weight_fn(model) -> Callable[[str, torch.Tensor], torch.Tensor | None]:
    """For a ModelPatcher: a function giving a patched *copy* of a weight that has patches, else ``None``.

    Uses ComfyUI's own ``comfy.lora.calculate_weight`` (what the sampler applies), on a float32 copy.
    """
    patches = getattr(model, "patches", None) or {}

    def fn(key: str, weight: torch.Tensor) -> torch.Tensor | None:
        if key not in patches:
            return None
        import comfy.lora  # ComfyUI edge

        return comfy.lora.calculate_weight(patches[key], weight.detach().to(torch.float32).clone(), key)

    return fn


def patched_clone(model, lora_state_dict: Mapping[str, torch.Tensor], strength: float = 1.0):
    """A clone of ``model`` carrying ``lora_state_dict`` as patches: what the stock LoraLoader does.

    Returns ``(clone, n_patched_keys)``; raises when a LoRA key matches no weight of the model.
    """
    import comfy.lora  # ComfyUI edge
    import comfy.lora_convert

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    lora = comfy.lora_convert.convert_lora(dict(lora_state_dict))
    loaded = comfy.lora.load_lora(lora, key_map, log_missing=False)
    expected = {k[: -len(".lora_up.weight")] for k in lora if k.endswith(".lora_up.weight")}
    if len(loaded) != len(expected):
        raise AdapterError(
            f"only {len(loaded)} of {len(expected)} erased sites exist in this MODEL; the erasure was made for "
            f"another model"
        )
    clone = model.clone()
    added = clone.add_patches(loaded, strength)
    if len(added) != len(loaded):
        raise AdapterError(
            f"only {len(added)} of {len(loaded)} patches applied; the erasure was made for another model"
        )
    return clone, len(added)


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
