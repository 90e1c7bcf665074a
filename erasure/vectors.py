"""Concept vectors: the token vectors a text encoder hands to the denoiser, and which positions to use.

A denoiser reads text through linear maps applied to every token vector of the prompt. An erasure
edits those maps, so it needs, for each concept, the token vectors that carry it. A causal text encoder
(CLIP, the toy world's) writes a word's meaning into the word's own tokens and into every later token,
end-of-text included; a bidirectional one (T5) spreads it everywhere. Hence three scopes:

* ``"concept"`` -- only the phrase's own tokens (narrowest; leaves paraphrase leakage through later tokens);
* ``"concept_to_eos"`` -- the phrase's tokens, then every token up to and including end-of-text (the
  default: these are the positions a causal encoder changes when the phrase is present, as used by the
  closed-form literature for CLIP encoders);
* ``"all"`` -- every position the denoiser sees (padding included; for bidirectional encoders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch

TokenScope = Literal["concept", "concept_to_eos", "all"]
TOKEN_SCOPES: tuple[TokenScope, ...] = ("concept", "concept_to_eos", "all")


@dataclass(frozen=True)
class EncodedPrompt:
    """One encoded prompt.

    vectors: ``[T, d]`` every token vector the text-reading maps see, in order.
    phrase:  long ``[k]`` positions of the phrase's own tokens (the concept named in the prompt).
    tail:    long ``[j]`` positions after the phrase up to and including end-of-text.
    """

    vectors: torch.Tensor
    phrase: torch.Tensor
    tail: torch.Tensor

    def select(self, scope: TokenScope) -> torch.Tensor:
        """Rows of ``vectors`` at the positions named by ``scope`` (see module docstring)."""
        if scope == "concept":
            return self.vectors[self.phrase]
        if scope == "concept_to_eos":
            return self.vectors[torch.cat([self.phrase, self.tail])]
        if scope == "all":
            return self.vectors
        raise ValueError(f"unknown token scope {scope!r}; choose one of {', '.join(TOKEN_SCOPES)}")


@runtime_checkable
class TextEncoder(Protocol):
    """What the engine needs from a text encoder (ComfyUI CLIP adapters, the toy world's encoder)."""

    @property
    def width(self) -> int:
        """Width ``d`` of the token vectors (the input width of the maps that read them)."""
        ...

    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list[EncodedPrompt]:
        """Encode each prompt; ``phrases[i]`` occurs in ``prompts[i]`` and its token positions are returned."""
        ...
