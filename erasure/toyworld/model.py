"""The toy text-to-image model: a word-level causal text encoder and a small cross-attention UNet.

The UNet reads text exactly like Stable Diffusion: every spatial transformer has a cross-attention
``attn2`` whose ``to_k`` / ``to_v`` are bias-free ``nn.Linear(text_width, inner)`` maps applied to every
token vector, so :func:`erasure.sites.discover_sites` finds them by the same names. Unlike SD, padding
positions are masked out of cross-attention, so the vectors the maps see are exactly BOS ... EOS — which
is what :meth:`ToyTextEncoder.encode` returns to the engine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..vectors import EncodedPrompt
from .config import ModelConfig

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
_WORD = re.compile(r"[a-z]+")


# --- tokenizer --------------------------------------------------------------------------------------


class WordTokenizer:
    """Lower-cased word tokens; BOS + words + EOS, padded to ``max_tokens`` (longer prompts are cut)."""

    def __init__(self, words: Sequence[str], max_tokens: int) -> None:
        self.vocab: list[str] = list(SPECIAL_TOKENS) + [w for w in words if w not in SPECIAL_TOKENS]
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_tokens = max_tokens

    @staticmethod
    def words(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def ids(self, text: str) -> list[int]:
        """Unpadded ids, BOS ... EOS."""
        body = [self.index.get(w, self.index[UNK]) for w in self.words(text)][: self.max_tokens - 2]
        return [self.index[BOS], *body, self.index[EOS]]

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``ids [B, L]`` (long) and ``mask [B, L]`` (bool, True on BOS ... EOS)."""
        ids = torch.full((len(texts), self.max_tokens), self.index[PAD], dtype=torch.long)
        mask = torch.zeros((len(texts), self.max_tokens), dtype=torch.bool)
        for i, text in enumerate(texts):
            row = self.ids(text)
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = True
        return ids, mask


# --- text encoder -----------------------------------------------------------------------------------


class CausalBlock(nn.Module):
    """Pre-norm causal self-attention + MLP (CLIP text-transformer style)."""

    def __init__(self, width: int, heads: int, mlp_mult: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_mult * width), nn.GELU(), nn.Linear(mlp_mult * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln_1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln_2(x))


class TextTransformer(nn.Module):
    """Token + position embeddings, causal blocks, final LayerNorm: ``ids [B, L] -> vectors [B, L, d]``."""

    def __init__(self, vocab_size: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(vocab_size, cfg.text_width)
        self.position_embedding = nn.Parameter(torch.randn(cfg.max_tokens, cfg.text_width) * 0.02)
        self.blocks = nn.ModuleList(
            CausalBlock(cfg.text_width, cfg.text_heads, cfg.ff_mult * 2) for _ in range(cfg.text_layers)
        )
        self.final_layer_norm = nn.LayerNorm(cfg.text_width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.position_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.final_layer_norm(x)


def _find_phrase(words: list[str], phrase: list[str]) -> int:
    """Index of the first occurrence of ``phrase`` in ``words`` (-1 if absent)."""
    for i in range(len(words) - len(phrase) + 1):
        if words[i : i + len(phrase)] == phrase:
            return i
    return -1


class ToyTextEncoder:
    """The toy world's implementation of :class:`erasure.vectors.TextEncoder`.

    ``encode`` returns, per prompt, the vectors BOS ... EOS (what the UNet's cross-attention sees), the
    positions of the phrase's words and the tail after them up to and including EOS. An empty phrase has
    no positions of its own and its tail is everything after BOS (BOS is the same for every prompt).
    """

    def __init__(self, tokenizer: WordTokenizer, net: TextTransformer) -> None:
        self.tokenizer = tokenizer
        self.net = net

    @property
    def width(self) -> int:
        return int(self.net.final_layer_norm.normalized_shape[0])

    @torch.no_grad()
    def embed(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning for the UNet: ``vectors [B, L, d]`` and ``mask [B, L]``."""
        ids, mask = self.tokenizer.batch(prompts)
        return self.net(ids), mask

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list[EncodedPrompt]:
        if len(prompts) != len(phrases):
            raise ValueError(f"{len(prompts)} prompts but {len(phrases)} phrases")
        vectors, mask = self.embed(prompts)
        out = []
        for i, (prompt, phrase) in enumerate(zip(prompts, phrases)):
            n = int(mask[i].sum())
            words = self.tokenizer.words(prompt)[: self.tokenizer.max_tokens - 2]
            pw = self.tokenizer.words(phrase)
            if pw:
                start = _find_phrase(words, pw)
                if start < 0:
                    raise ValueError(f"phrase {phrase!r} does not occur in prompt {prompt!r}")
                first, last = start + 1, start + len(pw)  # +1: BOS
                phrase_pos = torch.arange(first, last + 1)
                tail = torch.arange(last + 1, n)
            else:
                phrase_pos = torch.zeros(0, dtype=torch.long)
                tail = torch.arange(1, n)
            out.append(EncodedPrompt(vectors[i, :n].clone(), phrase_pos, tail))
        return out


# --- UNet -------------------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, c_out))
        self.out_layers = nn.Sequential(nn.GroupNorm(groups, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip_connection = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    """SD-style attention: ``to_q``/``to_k``/``to_v`` without bias, ``to_out.0`` with bias."""

    def __init__(self, query_dim: int, context_dim: int, head_dim: int) -> None:
        super().__init__()
        self.heads = max(1, query_dim // head_dim)
        inner = self.heads * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, -1).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.heads, -1).transpose(1, 2)
        attn_mask = mask[:, None, None, :] if mask is not None else None
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](a.transpose(1, 2).reshape(b, n, -1))


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, head_dim: int, ff_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, head_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn1(h, h)
        x = x + self.attn2(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, context_dim: int, head_dim: int, groups: int, ff_mult: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, context_dim, head_dim, ff_mult)])
        self.proj_out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.proj_in(self.norm(x).flatten(2).transpose(1, 2))
        for block in self.transformer_blocks:
            t = block(t, context, mask)
        return x + self.proj_out(t).transpose(1, 2).reshape(b, c, h, w)


class Level(nn.Module):
    """ResBlock followed by a SpatialTransformer (one UNet stage)."""

    def __init__(self, c_in: int, c_out: int, cfg: ModelConfig, temb: int) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_out, temb, cfg.unet_groups)
        self.attn = SpatialTransformer(c_out, cfg.text_width, cfg.unet_head_dim, cfg.unet_groups, cfg.ff_mult)

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.attn(self.res(x, emb), context, mask)


class ToyUNet(nn.Module):
    """Epsilon-prediction UNet on ``[B, 3, 32, 32]`` images in [-1, 1].

    The image is pixel-unshuffled 2x2 (16x16 x 12 channels), processed at 16/8/4 px with a
    cross-attention transformer at every stage, then shuffled back.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        chans = cfg.unet_channels
        c_img = 3 * cfg.unshuffle**2
        temb = 4 * chans[0]
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_freq_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(c_img, chans[0], 3, padding=1)
        self.input_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        prev = chans[0]
        for i, c in enumerate(chans):
            self.input_blocks.append(Level(prev, c, cfg, temb))
            prev = c
            if i < len(chans) - 1:
                self.downsamplers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.middle_block = Level(prev, prev, cfg, temb)
        self.output_blocks = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            self.output_blocks.append(Level(prev + c, c, cfg, temb))
            prev = c
            if i > 0:
                self.upsamplers.append(nn.Conv2d(c, chans[i - 1], 3, padding=1))
                prev = chans[i - 1]
        self.out = nn.Sequential(nn.GroupNorm(cfg.unet_groups, prev), nn.SiLU(), nn.Conv2d(prev, c_img, 3, padding=1))

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(t, self.cfg.time_freq_dim))
        h = self.conv_in(F.pixel_unshuffle(x, self.cfg.unshuffle))
        skips = []
        for i, level in enumerate(self.input_blocks):
            h = level(h, emb, context, mask)
            skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
        h = self.middle_block(h, emb, context, mask)
        for j, level in enumerate(self.output_blocks):
            h = level(torch.cat([h, skips.pop()], dim=1), emb, context, mask)
            if j < len(self.upsamplers):
                h = self.upsamplers[j](F.interpolate(h, scale_factor=2, mode="nearest"))
        return F.pixel_shuffle(self.out(h), self.cfg.unshuffle)


# --- noise schedule ---------------------------------------------------------------------------------


def cosine_alphas_cumprod(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal cosine schedule, ``alpha_bar[t]`` for t = 0 .. num_steps-1."""
    s = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0).float()


# --- the whole model --------------------------------------------------------------------------------


class ToyModel(nn.Module):
    """Text encoder + UNet trained together; ``state_dict`` keys ``text.*`` and ``unet.*``."""

    def __init__(self, words: Sequence[str], cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = WordTokenizer(words, cfg.max_tokens)
        self.text = TextTransformer(len(self.tokenizer.vocab), cfg)
        self.unet = ToyUNet(cfg)
        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(cfg.num_train_timesteps), persistent=False)

    def encoder(self) -> ToyTextEncoder:
        """The engine-facing text encoder (shares this model's weights)."""
        return ToyTextEncoder(self.tokenizer, self.text)

    def condition(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.batch(prompts)
        return self.text(ids), mask

    def with_unet_weights(self, weights: Mapping[str, torch.Tensor]) -> ToyModel:
        """A copy whose UNet has ``weights`` (site name -> ``[out, d]``, e.g. from ``Delta.apply``) loaded.

        Names are UNet module paths without ``.weight`` (as :func:`erasure.sites.discover_sites` returns
        them from ``unet.state_dict()``); the original model is untouched.
        """
        clone = ToyModel(self.tokenizer.vocab[len(SPECIAL_TOKENS) :], self.cfg)
        clone.load_state_dict(self.state_dict())
        sd = clone.unet.state_dict()
        for name, w in weights.items():
            key = f"{name}.weight"
            if key not in sd:
                raise KeyError(f"{key} is not a UNet weight")
            if tuple(w.shape) != tuple(sd[key].shape):
                raise ValueError(f"{key}: shape {tuple(w.shape)} != {tuple(sd[key].shape)}")
            sd[key] = w.to(sd[key].dtype)
        clone.unet.load_state_dict(sd)
        return clone.eval()
