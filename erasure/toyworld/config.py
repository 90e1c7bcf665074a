"""Named configuration of the toy world: the scene grammar, the model shape and the training recipe.

Everything that shapes the world is a number here, not in code, so a reader can check the co-occurrence
statistics that make CARE pairs "known by construction":

* every scene has exactly one background and at most one object;
* an object with a *home* background appears on it with probability ``home_prob`` (boat on water 0.9,
  star at night 0.9, snowman on snow 0.9, ...); the rest is spread evenly over the other backgrounds;
* ``house``, ``car`` and ``balloon`` have no home: they are independent of the background.

The configs are frozen dataclasses that round-trip through JSON (``to_dict`` / ``from_dict``), and the
committed weights carry the exact config they were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

BACKGROUNDS: tuple[str, ...] = ("sky", "grass", "night", "water", "snow", "sand")
OBJECTS: tuple[str, ...] = (
    "sun",
    "moon",
    "star",
    "boat",
    "fish",
    "tree",
    "house",
    "car",
    "flower",
    "snowman",
    "cactus",
    "balloon",
)

# Object -> (home background, probability of appearing on it). Objects not listed are independent.
HOME_BACKGROUND: dict[str, tuple[str, float]] = {
    "sun": ("sky", 0.85),
    "moon": ("night", 0.85),
    "star": ("night", 0.9),
    "boat": ("water", 0.9),
    "fish": ("water", 0.9),
    "tree": ("grass", 0.8),
    "flower": ("grass", 0.8),
    "snowman": ("snow", 0.9),
    "cactus": ("sand", 0.9),
}

# Colour words an object may carry in its caption (and in its pixels).
OBJECT_COLOURS: dict[str, tuple[str, ...]] = {
    "car": ("red", "blue", "yellow"),
    "balloon": ("red", "blue", "green"),
    "flower": ("red", "pink", "purple"),
}

# Background -> the words that name it alone ("water") and after an object ("a boat on water").
BACKGROUND_ALONE: dict[str, str] = {
    "sky": "the sky",
    "grass": "grass",
    "night": "night",
    "water": "water",
    "snow": "snow",
    "sand": "sand",
}
BACKGROUND_AFTER_OBJECT: dict[str, str] = {
    "sky": "in the sky",
    "grass": "on grass",
    "night": "at night",
    "water": "on water",
    "snow": "on snow",
    "sand": "on sand",
}


@dataclass(frozen=True)
class WorldConfig:
    """Scene grammar and caption statistics."""

    image_size: int = 32
    supersample: int = 2  # render at image_size * supersample, then box-filter down (anti-aliasing)
    empty_scene_prob: float = 0.15  # scenes with a background only
    mention_background_prob: float = 0.5  # object scenes whose caption also names the background
    colour_word_prob: float = 0.6  # colourable objects whose caption names the colour
    object_scale_range: tuple[float, float] = (0.85, 1.15)
    object_centre_range: tuple[float, float] = (11.0, 21.0)  # pixels, both axes
    colour_jitter: float = 0.06  # uniform +- jitter per channel on object / background base colours
    backgrounds: tuple[str, ...] = BACKGROUNDS
    objects: tuple[str, ...] = OBJECTS
    home_background: dict[str, tuple[str, float]] = field(default_factory=lambda: dict(HOME_BACKGROUND))
    object_colours: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(OBJECT_COLOURS))

    def background_probs(self, obj: str | None) -> dict[str, float]:
        """P(background | object) as set by the config (uniform for independent objects and empty scenes)."""
        n = len(self.backgrounds)
        if obj is None or obj not in self.home_background:
            return {b: 1.0 / n for b in self.backgrounds}
        home, p = self.home_background[obj]
        rest = (1.0 - p) / (n - 1)
        return {b: (p if b == home else rest) for b in self.backgrounds}

    @property
    def labels(self) -> tuple[str, ...]:
        """Detector labels: objects, then backgrounds."""
        return self.objects + self.backgrounds


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the text encoder and the UNet denoiser."""

    image_size: int = 32
    max_tokens: int = 10  # BOS + up to 8 words + EOS
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    unet_channels: tuple[int, ...] = (48, 96, 96)  # per level, after a 2x2 pixel-unshuffle (16, 8, 4 px)
    unet_head_dim: int = 24
    unet_groups: int = 8
    unshuffle: int = 2
    ff_mult: int = 2
    time_freq_dim: int = 64
    num_train_timesteps: int = 1000
    # Offset noise: a per-image, per-channel constant added to the Gaussian noise (std noise_offset), in
    # training and in the sampler's starting noise. Without it a 32x32 image's mean colour survives even
    # the noisiest steps, so the model reads the background from the seed instead of from the caption.
    noise_offset: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    """Recipe for the joint text-encoder + UNet training."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 48
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    caption_dropout: float = 0.1  # empty caption -> classifier-free guidance
    # Loss weight clamp(1 / SNR(t), 1, high_noise_weight_max): the epsilon loss hides errors in the
    # high-noise steps where the caption decides the scene (an x0 error counts SNR times less), so those
    # steps are up-weighted up to this factor (1.0 = plain epsilon loss).
    high_noise_weight_max: float = 1.0
    ema_decay: float = 0.999
    num_threads: int = 2
    max_minutes: float = 40.0  # wall-clock guard; training stops early (and says so) past it
    checkpoint_every: int = 250
    stop_after: int | None = None  # stop after this many steps, keeping the schedule of ``steps``


@dataclass(frozen=True)
class DetectorConfig:
    """Multi-label detector of objects and backgrounds."""

    seed: int = 1
    channels: tuple[int, ...] = (32, 64, 128)
    steps: int = 3000
    batch_size: int = 96
    lr: float = 2e-3
    # Weight of the present-object term of each object's binary cross-entropy. An object is present in
    # 1 of ~14 images, so plain BCE buys accuracy with misses: the first detector (weight 1) had 98.7%
    # accuracy on every object but found only 88% of the flowers it was shown.
    positive_weight: float = 3.0
    noise_std_max: float = 0.06  # augmentation: generated images are a little noisy
    blur_prob: float = 0.3
    eval_images: int = 4000
    eval_seed: int = 12345
    threshold: float = 0.5


@dataclass(frozen=True)
class SamplerConfig:
    """Default DDIM sampling settings."""

    steps: int = 25
    guidance_scale: float = 4.0
    eta: float = 0.0
    batch_size: int = 64
    # Start at the noisiest step whose alpha_bar is at least this: at the schedule's very end
    # (alpha_bar ~ 1e-9) the x0 estimate divides model error by sqrt(alpha_bar) and injects clipped noise.
    min_alpha_bar: float = 0.005


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuplify(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`to_dict` output (unknown keys are an error)."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
    return cls(**{k: _tuplify(v) for k, v in data.items()})
