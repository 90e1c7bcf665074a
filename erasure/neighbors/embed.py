"""Encoded vocabularies and their on-disk cache.

Each concept is written into a template (``"{}"`` by default) and encoded once; the rows kept are those of
the token scope the erasure uses (:mod:`erasure.vectors`, ``concept_to_eos`` by default), because those
are the vectors the edited maps will read when a prompt names the concept. A concept is also summarised
by its *pooled* vector ``p = mean of its rows``, used for neighbourhoods (:mod:`.relation`).

**Cache.** Encoding 10,000 concepts takes a CLIP encoder tens of seconds, so results are stored under
``<cache dir>/vocab/<key>.safetensors`` with ``key = sha256(format, encoder fingerprint, template, scope)``.
The file holds every concept ever encoded under that key; a request reuses the stored rows and encodes
only the missing concepts. The fingerprint must change whenever the encoder's weights do, so it comes
from the encoder itself: an encoder may offer ``fingerprint() -> str`` (an optional extension of the
:class:`~erasure.vectors.TextEncoder` protocol; :func:`state_fingerprint` hashes a state dict for it).
Without one there is nothing safe to key on and nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..erase import encode_all
from ..vectors import EncodedPrompt, TextEncoder, TokenScope
from .vocab import normalise

CACHE_FORMAT = "care-vocab-1"
"""Bumped whenever what a cache file stores changes, so old files are never misread."""
CACHE_ENV = "CARE_ERASURE_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/care-erasure``)."""
DEFAULT_TEMPLATE = "{}"
DEFAULT_SCOPE: TokenScope = "concept_to_eos"
STORE_DTYPE = torch.float32


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "care-erasure")


def state_fingerprint(tensors: Mapping[str, torch.Tensor], extra: str = "") -> str:
    """SHA-256 of names, shapes, dtypes and bytes of ``tensors`` (sorted by name), plus ``extra``
    (e.g. a tokenizer's vocabulary). For encoders to implement ``fingerprint()``."""
    h = hashlib.sha256(extra.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        flat = t.reshape(-1)
        if flat.dtype in (torch.bfloat16, torch.float16):
            flat = flat.view(torch.int16)
        elif flat.dtype.is_floating_point and flat.dtype.itemsize == 1:  # float8 variants
            flat = flat.view(torch.uint8)
        h.update(flat.numpy().tobytes())
    return h.hexdigest()


def encoder_fingerprint(encoder: TextEncoder) -> str | None:
    """The encoder's ``fingerprint()`` if it offers one (and it is not empty), else ``None``."""
    method = getattr(encoder, "fingerprint", None)
    if not callable(method):
        return None
    value = method()
    return str(value) if value else None


class FingerprintedEncoder:
    """Wraps an encoder that has no ``fingerprint()`` with one the caller computed."""

    def __init__(self, encoder: TextEncoder, fingerprint: str) -> None:
        self.encoder = encoder
        self._fingerprint = fingerprint

    @property
    def width(self) -> int:
        return self.encoder.width

    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list[EncodedPrompt]:
        return self.encoder.encode(prompts, phrases)

    def fingerprint(self) -> str:
        return self._fingerprint


@dataclass(frozen=True)
class VocabularyEmbedding:
    """Rows of every concept, concatenated: concept ``i`` owns ``rows[offsets[i]:offsets[i+1]]``."""

    concepts: tuple[str, ...]
    rows: torch.Tensor  # [R, d] float32
    offsets: torch.Tensor  # [N + 1] long
    template: str = DEFAULT_TEMPLATE
    scope: TokenScope = DEFAULT_SCOPE

    def __len__(self) -> int:
        return len(self.concepts)

    @property
    def width(self) -> int:
        return int(self.rows.shape[1])

    def owner(self) -> torch.Tensor:
        """``[R]`` long: the concept index of every row."""
        counts = self.offsets[1:] - self.offsets[:-1]
        return torch.repeat_interleave(torch.arange(len(self.concepts)), counts)

    def pooled(self) -> torch.Tensor:
        """``[N, d]`` float64: mean row of each concept."""
        sums = torch.zeros(len(self.concepts), self.width, dtype=torch.float64)
        sums.index_add_(0, self.owner(), self.rows.double())
        counts = (self.offsets[1:] - self.offsets[:-1]).clamp_min(1).double()
        return sums / counts[:, None]

    def subset(self, concepts: Sequence[str]) -> VocabularyEmbedding:
        """The embedding of ``concepts`` (each must be present), in that order."""
        index = {c: i for i, c in enumerate(self.concepts)}
        missing = [c for c in concepts if normalise(c) not in index]
        if missing:
            raise KeyError(f"not encoded: {missing[:5]}")
        picks = [index[normalise(c)] for c in concepts]
        parts = [self.rows[self.offsets[i] : self.offsets[i + 1]] for i in picks]
        counts = torch.tensor([p.shape[0] for p in parts], dtype=torch.long)
        rows = torch.cat(parts) if parts else self.rows[:0]
        return VocabularyEmbedding(tuple(normalise(c) for c in concepts), rows, _offsets(counts), self.template, self.scope)

    @staticmethod
    def concat(parts: Iterable[VocabularyEmbedding]) -> VocabularyEmbedding:
        parts = list(parts)
        counts = torch.cat([p.offsets[1:] - p.offsets[:-1] for p in parts])
        return VocabularyEmbedding(
            tuple(c for p in parts for c in p.concepts), torch.cat([p.rows for p in parts]), _offsets(counts),
            parts[0].template, parts[0].scope,
        )


def _offsets(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])


def fill(template: str, concept: str) -> str:
    """``template`` with ``{}`` replaced by ``concept``, whitespace collapsed (as the erasure writes prompts)."""
    return " ".join(template.replace("{}", concept).split())


def encode_concepts(
    encoder: TextEncoder, concepts: Sequence[str], template: str = DEFAULT_TEMPLATE, scope: TokenScope = DEFAULT_SCOPE,
    progress: Callable[[], None] | None = None,
) -> VocabularyEmbedding:
    """Encode ``concepts`` without any cache."""
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must contain '{{}}' exactly once")
    concepts = [normalise(c) for c in concepts]
    requests = [(fill(template, c), c) for c in concepts]
    encoded = encode_all(encoder, requests, progress)
    parts = []
    for request in requests:
        rows = encoded[request].select(scope)
        if rows.shape[0] == 0:
            raise ValueError(f"concept {request[1]!r} has no token vectors in scope {scope!r} (prompt cut off?)")
        parts.append(rows.detach().to("cpu", STORE_DTYPE))
    counts = torch.tensor([p.shape[0] for p in parts], dtype=torch.long)
    rows = torch.cat(parts) if parts else torch.zeros(0, encoder.width, dtype=STORE_DTYPE)
    return VocabularyEmbedding(tuple(concepts), rows, _offsets(counts), template, scope)


def cache_key(fingerprint: str, template: str, scope: str) -> str:
    return hashlib.sha256(f"{CACHE_FORMAT}|{fingerprint}|{template}|{scope}".encode()).hexdigest()[:32]


def _read(path: Path, template: str, scope: TokenScope) -> VocabularyEmbedding | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT:
                return None
            concepts = tuple(json.loads(meta["concepts"]))
            return VocabularyEmbedding(concepts, f.get_tensor("rows"), f.get_tensor("offsets"), template, scope)
    except (OSError, KeyError, ValueError, SafetensorError):
        return None  # a damaged or foreign file is treated as absent and rewritten


def _write(path: Path, emb: VocabularyEmbedding) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    save_file(
        {"rows": emb.rows.contiguous(), "offsets": emb.offsets.contiguous()}, str(tmp),
        metadata={"format": CACHE_FORMAT, "concepts": json.dumps(list(emb.concepts))},
    )
    tmp.replace(path)  # atomic: a concurrent reader sees the old or the new file, never half of one


def embed_vocabulary(
    encoder: TextEncoder,
    concepts: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    scope: TokenScope = DEFAULT_SCOPE,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    progress: Callable[[], None] | None = None,
) -> tuple[VocabularyEmbedding, dict[str, object]]:
    """Encode ``concepts`` (normalised, in order), reusing and extending the cache when the encoder has a
    fingerprint. Returns the embedding and stats (``cached``, ``encoded``, ``cache_file``)."""
    wanted = list(dict.fromkeys(normalise(c) for c in concepts))
    fingerprint = encoder_fingerprint(encoder) if use_cache else None
    if fingerprint is None:
        emb = encode_concepts(encoder, wanted, template, scope, progress)
        return emb, {"cached": 0, "encoded": len(wanted), "cache_file": None}
    path = Path(cache_dir or default_cache_dir()) / "vocab" / f"{cache_key(fingerprint, template, scope)}.safetensors"
    stored = _read(path, template, scope) if path.exists() else None
    have = set(stored.concepts) if stored is not None else set()
    missing = [c for c in wanted if c not in have]
    if missing:
        new = encode_concepts(encoder, missing, template, scope, progress)
        stored = new if stored is None else VocabularyEmbedding.concat([stored, new])
        _write(path, stored)
    assert stored is not None
    return stored.subset(wanted), {"cached": len(wanted) - len(missing), "encoded": len(missing), "cache_file": str(path)}
