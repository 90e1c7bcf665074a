"""Test doubles at the edge: a small deterministic causal text encoder and random edit sites."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from erasure.sites import EditSite
from erasure.vectors import EncodedPrompt


class WordHashEncoder:
    """A causal word-level encoder: token t is a fixed mix of word embeddings 0..t (BOS, words, EOS, pads).

    Word embeddings come from a hash of the word, so the same word always gets the same vector and the
    encoder is deterministic without any state. Mixing earlier words into later positions reproduces what
    makes erasure hard with CLIP: a concept leaks into every later token.
    """

    def __init__(self, width: int = 32, length: int = 12, leak: float = 0.5) -> None:
        self._width = width
        self.length = length
        self.leak = leak

    @property
    def width(self) -> int:
        return self._width

    def embed(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return torch.randn(self._width, generator=torch.Generator().manual_seed(seed))

    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list[EncodedPrompt]:
        out = []
        for prompt, phrase in zip(prompts, phrases):
            words = prompt.split()
            tokens = ["<bos>", *words, "<eos>"] + ["<pad>"] * (self.length - len(words) - 2)
            state = torch.zeros(self._width)
            rows = []
            for token in tokens:
                state = self.leak * state + self.embed(token)
                rows.append(state.clone())
            phrase_words = phrase.split()
            start = next((i for i in range(len(words)) if words[i : i + len(phrase_words)] == phrase_words), len(words))
            end = start + len(phrase_words)
            out.append(EncodedPrompt(
                torch.stack(rows),
                torch.arange(1 + start, 1 + end),
                torch.arange(1 + end, len(words) + 2),
            ))
        return out



def random_sites(
    width: int = 32, outs: Sequence[int] = (24, 40, 24), seed: int = 0, dtype: torch.dtype = torch.float32
) -> list[EditSite]:
    g = torch.Generator().manual_seed(seed)
    return [
        EditSite(f"blocks.{i}.attn2.to_{'kv'[i % 2]}", (torch.randn(o, width, generator=g) / width**0.5).to(dtype))
        for i, o in enumerate(outs)
    ]
