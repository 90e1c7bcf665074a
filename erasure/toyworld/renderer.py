"""Procedural scenes: one background, at most one object, a caption — all drawn from a seeded grammar.

Shapes are painted with numpy masks on a supersampled canvas and box-filtered down, so edges are smooth
and every object has a distinctive silhouette and palette that a small detector separates reliably.
Nothing here uses global random state: every function takes a ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import BACKGROUND_AFTER_OBJECT, BACKGROUND_ALONE, WorldConfig

RGB = tuple[float, float, float]

BACKGROUND_COLOURS: dict[str, RGB] = {
    "sky": (0.55, 0.78, 0.98),
    "grass": (0.35, 0.70, 0.25),
    "night": (0.05, 0.06, 0.22),
    "water": (0.10, 0.35, 0.75),
    "snow": (0.92, 0.94, 0.98),
    "sand": (0.90, 0.80, 0.52),
}
NAMED_COLOURS: dict[str, RGB] = {
    "red": (0.90, 0.12, 0.12),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.98, 0.85, 0.10),
    "green": (0.10, 0.80, 0.25),
    "pink": (0.98, 0.50, 0.75),
    "purple": (0.60, 0.20, 0.80),
}
BLACK: RGB = (0.05, 0.05, 0.05)
WHITE: RGB = (1.0, 1.0, 1.0)
BROWN: RGB = (0.50, 0.30, 0.12)
GREY: RGB = (0.45, 0.45, 0.50)
DARK_GREEN: RGB = (0.05, 0.38, 0.10)
ORANGE: RGB = (1.0, 0.55, 0.05)
SUN_YELLOW: RGB = (1.0, 0.85, 0.15)
MOON_WHITE: RGB = (0.95, 0.95, 0.80)
STAR_YELLOW: RGB = (1.0, 0.95, 0.35)
ROOF_RED: RGB = (0.75, 0.15, 0.10)
WALL_TAN: RGB = (0.93, 0.82, 0.62)
CACTUS_GREEN: RGB = (0.20, 0.55, 0.20)
TEXTURE_AMPLITUDE = 0.06  # background texture strength (waves, grass blades, speckles)


@dataclass(frozen=True)
class Scene:
    """A sampled scene: what is in it, where, and its caption."""

    background: str
    obj: str | None
    colour: str | None
    centre: tuple[float, float]  # (x, y) in output pixels
    scale: float
    caption: str


class Canvas:
    """A supersampled float RGB canvas with pixel-centre coordinates in output-pixel units."""

    def __init__(self, size: int, supersample: int) -> None:
        self.size = size
        self.ss = supersample
        n = size * supersample
        coords = (np.arange(n, dtype=np.float32) + 0.5) / supersample
        self.y, self.x = np.meshgrid(coords, coords, indexing="ij")
        self.rgb = np.zeros((n, n, 3), dtype=np.float32)

    def fill(self, mask: np.ndarray, colour: RGB) -> None:
        self.rgb[mask] = colour

    def result(self) -> np.ndarray:
        """``[size, size, 3]`` float32 in [0, 1], box-filtered from the supersampled canvas."""
        n, s = self.size, self.ss
        out = self.rgb.reshape(n, s, n, s, 3).mean(axis=(1, 3))
        return np.clip(out, 0.0, 1.0)


# --- mask primitives -------------------------------------------------------------------------------


def disc(c: Canvas, cx: float, cy: float, r: float) -> np.ndarray:
    return (c.x - cx) ** 2 + (c.y - cy) ** 2 <= r * r


def ellipse(c: Canvas, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((c.x - cx) / rx) ** 2 + ((c.y - cy) / ry) ** 2 <= 1.0


def rect(c: Canvas, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (c.x >= x0) & (c.x <= x1) & (c.y >= y0) & (c.y <= y1)


def polygon(c: Canvas, pts: list[tuple[float, float]]) -> np.ndarray:
    """Convex polygon (either orientation) as an intersection of half-planes."""
    inside_pos = np.ones_like(c.x, dtype=bool)
    inside_neg = np.ones_like(c.x, dtype=bool)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:] + pts[:1]):
        cross = (x1 - x0) * (c.y - y0) - (y1 - y0) * (c.x - x0)
        inside_pos &= cross >= 0
        inside_neg &= cross <= 0
    return inside_pos | inside_neg


def star_polygon_masks(c: Canvas, cx: float, cy: float, r_out: float, r_in: float) -> np.ndarray:
    """Five-pointed star: a central pentagon plus five triangular points."""
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    pts = [
        (cx + (r_out if i % 2 == 0 else r_in) * np.cos(a), cy + (r_out if i % 2 == 0 else r_in) * np.sin(a))
        for i, a in enumerate(angles)
    ]
    mask = polygon(c, [pts[i] for i in range(1, 10, 2)])
    for i in range(0, 10, 2):
        mask |= polygon(c, [pts[i - 1], pts[i], pts[(i + 1) % 10]])
    return mask


def jitter(rng: np.random.Generator, colour: RGB, amount: float) -> RGB:
    r, g, b = (float(np.clip(v + rng.uniform(-amount, amount), 0.0, 1.0)) for v in colour)
    return (r, g, b)


# --- backgrounds -----------------------------------------------------------------------------------


def paint_background(c: Canvas, name: str, rng: np.random.Generator, cfg: WorldConfig) -> None:
    base = np.array(jitter(rng, BACKGROUND_COLOURS[name], cfg.colour_jitter), dtype=np.float32)
    c.rgb[:] = base
    size = float(c.size)
    if name == "sky":  # lighter towards the horizon
        c.rgb += (c.y / size)[..., None] * np.array([0.15, 0.10, 0.0], dtype=np.float32)
    elif name == "water":  # horizontal waves
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(c.y * 1.6 + np.sin(c.x * 0.5 + phase) * 1.5)
        c.rgb += (waves > 0.7)[..., None] * np.float32(2 * TEXTURE_AMPLITUDE * 1.5)
    elif name == "grass":  # darker vertical blades
        blades = rng.random(c.size * c.ss) < 0.25
        c.rgb -= (blades[None, :] & (np.sin(c.y * 2.0) > -0.2))[..., None] * np.float32(TEXTURE_AMPLITUDE * 1.5)
    elif name == "night":  # a faint glow near the horizon
        c.rgb += ((c.y / size) ** 2)[..., None] * np.array([0.02, 0.02, 0.10], dtype=np.float32)
    elif name == "snow":  # blue-grey speckles
        speckles = rng.random(c.x.shape) < 0.04
        c.rgb -= speckles[..., None] * np.array([0.15, 0.10, 0.0], dtype=np.float32)
    elif name == "sand":  # brown grains
        grains = rng.random(c.x.shape) < 0.06
        c.rgb -= grains[..., None] * np.array([0.15, 0.15, 0.10], dtype=np.float32)


# --- objects (centre cx, cy; unit u = scale, sizes in output pixels) -------------------------------


def _sun(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    for k in range(8):
        a = k * np.pi / 4
        dx, dy = np.cos(a), np.sin(a)
        px, py = -dy, dx
        w = 0.9 * u
        tip = 8.5 * u
        c.fill(polygon(c, [(cx + px * w, cy + py * w), (cx + dx * tip, cy + dy * tip), (cx - px * w, cy - py * w)]), ORANGE)
    c.fill(disc(c, cx, cy, 5.0 * u), SUN_YELLOW)


def _moon(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    crescent = disc(c, cx, cy, 6.5 * u) & ~disc(c, cx + 3.5 * u, cy - 2.0 * u, 5.5 * u)
    c.fill(crescent, MOON_WHITE)


def _star(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(star_polygon_masks(c, cx, cy, 7.5 * u, 3.0 * u), STAR_YELLOW)


def _boat(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    hull = polygon(c, [(cx - 8 * u, cy + 1 * u), (cx + 8 * u, cy + 1 * u), (cx + 5 * u, cy + 5 * u), (cx - 5 * u, cy + 5 * u)])
    c.fill(hull, BROWN)
    c.fill(rect(c, cx - 0.6 * u, cy - 8 * u, cx + 0.6 * u, cy + 1 * u), BLACK)
    c.fill(polygon(c, [(cx + 1 * u, cy - 8 * u), (cx + 1 * u, cy), (cx + 6.5 * u, cy)]), WHITE)


def _fish(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(polygon(c, [(cx + 3 * u, cy), (cx + 8.5 * u, cy - 4 * u), (cx + 8.5 * u, cy + 4 * u)]), ORANGE)
    c.fill(ellipse(c, cx - 1.5 * u, cy, 6.5 * u, 3.8 * u), ORANGE)
    c.fill(disc(c, cx - 4.5 * u, cy - 1.0 * u, 1.0 * u), BLACK)


def _tree(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(rect(c, cx - 1.3 * u, cy, cx + 1.3 * u, cy + 8.5 * u), BROWN)
    c.fill(disc(c, cx, cy - 3 * u, 6.0 * u), DARK_GREEN)


def _house(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(rect(c, cx - 6 * u, cy - 1 * u, cx + 6 * u, cy + 8 * u), WALL_TAN)
    c.fill(polygon(c, [(cx - 8 * u, cy - 1 * u), (cx + 8 * u, cy - 1 * u), (cx, cy - 8 * u)]), ROOF_RED)
    c.fill(rect(c, cx - 1.5 * u, cy + 3 * u, cx + 1.5 * u, cy + 8 * u), BROWN)


def _car(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    body = colour or NAMED_COLOURS["red"]
    c.fill(rect(c, cx - 9 * u, cy - 1 * u, cx + 9 * u, cy + 4 * u), body)
    c.fill(polygon(c, [(cx - 5 * u, cy - 1 * u), (cx + 5 * u, cy - 1 * u), (cx + 3 * u, cy - 5 * u), (cx - 3 * u, cy - 5 * u)]), body)
    c.fill(rect(c, cx - 2.5 * u, cy - 4 * u, cx + 2.5 * u, cy - 1.5 * u), (0.75, 0.9, 1.0))
    for wx in (-5.0, 5.0):
        c.fill(disc(c, cx + wx * u, cy + 4.5 * u, 2.3 * u), BLACK)


def _flower(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    petals = colour or NAMED_COLOURS["red"]
    c.fill(rect(c, cx - 0.7 * u, cy, cx + 0.7 * u, cy + 9 * u), DARK_GREEN)
    for k in range(5):
        a = -np.pi / 2 + k * 2 * np.pi / 5
        c.fill(disc(c, cx + 3.2 * u * np.cos(a), cy - 3 * u + 3.2 * u * np.sin(a), 2.5 * u), petals)
    c.fill(disc(c, cx, cy - 3 * u, 1.8 * u), SUN_YELLOW)


def _snowman(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    for oy, r in ((4.0, 5.0), (-4.5, 3.6)):
        c.fill(disc(c, cx, cy + oy * u, (r + 0.8) * u), GREY)
        c.fill(disc(c, cx, cy + oy * u, r * u), WHITE)
    c.fill(disc(c, cx - 1.3 * u, cy - 5.3 * u, 0.7 * u), BLACK)
    c.fill(disc(c, cx + 1.3 * u, cy - 5.3 * u, 0.7 * u), BLACK)
    c.fill(polygon(c, [(cx, cy - 4.5 * u), (cx + 3.5 * u, cy - 4 * u), (cx, cy - 3.5 * u)]), ORANGE)


def _cactus(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(rect(c, cx - 2 * u, cy - 8 * u, cx + 2 * u, cy + 9 * u), CACTUS_GREEN)
    c.fill(disc(c, cx, cy - 8 * u, 2 * u), CACTUS_GREEN)
    c.fill(rect(c, cx - 6.5 * u, cy + 0.5 * u, cx, cy + 2.5 * u), CACTUS_GREEN)
    c.fill(rect(c, cx - 6.5 * u, cy - 4 * u, cx - 4.5 * u, cy + 2.5 * u), CACTUS_GREEN)
    c.fill(rect(c, cx, cy - 2.5 * u, cx + 6.5 * u, cy - 0.5 * u), CACTUS_GREEN)
    c.fill(rect(c, cx + 4.5 * u, cy - 6.5 * u, cx + 6.5 * u, cy - 0.5 * u), CACTUS_GREEN)


def _balloon(c: Canvas, cx: float, cy: float, u: float, colour: RGB | None, rng: np.random.Generator) -> None:
    c.fill(rect(c, cx - 0.4 * u, cy + 2 * u, cx + 0.4 * u, cy + 10 * u), GREY)
    c.fill(polygon(c, [(cx - 1.5 * u, cy + 4 * u), (cx + 1.5 * u, cy + 4 * u), (cx, cy + 2 * u)]), colour or NAMED_COLOURS["red"])
    c.fill(ellipse(c, cx, cy - 3 * u, 5.0 * u, 6.0 * u), colour or NAMED_COLOURS["red"])
    c.fill(disc(c, cx - 2 * u, cy - 5.5 * u, 1.2 * u), (1.0, 1.0, 1.0))


Painter = Callable[[Canvas, float, float, float, "RGB | None", np.random.Generator], None]
PAINTERS: dict[str, Painter] = {
    "sun": _sun,
    "moon": _moon,
    "star": _star,
    "boat": _boat,
    "fish": _fish,
    "tree": _tree,
    "house": _house,
    "car": _car,
    "flower": _flower,
    "snowman": _snowman,
    "cactus": _cactus,
    "balloon": _balloon,
}


# --- scenes and captions ---------------------------------------------------------------------------


def object_phrase(obj: str, colour: str | None) -> str:
    return f"a {colour} {obj}" if colour else f"a {obj}"


def caption_for(background: str, obj: str | None, colour_word: str | None, mention_background: bool) -> str:
    """The caption grammar: "water", "a boat", "a red car", "a boat on water", "a star at night"."""
    if obj is None:
        return BACKGROUND_ALONE[background]
    phrase = object_phrase(obj, colour_word)
    return f"{phrase} {BACKGROUND_AFTER_OBJECT[background]}" if mention_background else phrase


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """Draw one scene (object, background from P(background | object), placement, caption)."""
    obj: str | None = None
    if rng.random() >= cfg.empty_scene_prob:
        obj = cfg.objects[int(rng.integers(len(cfg.objects)))]
    probs = cfg.background_probs(obj)
    background = cfg.backgrounds[int(rng.choice(len(cfg.backgrounds), p=[probs[b] for b in cfg.backgrounds]))]
    colour = None
    colour_word = None
    if obj is not None and obj in cfg.object_colours:
        options = cfg.object_colours[obj]
        colour = options[int(rng.integers(len(options)))]
        colour_word = colour if rng.random() < cfg.colour_word_prob else None
    lo, hi = cfg.object_centre_range
    centre = (float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))
    scale = float(rng.uniform(*cfg.object_scale_range))
    mention = obj is None or rng.random() < cfg.mention_background_prob
    return Scene(background, obj, colour, centre, scale, caption_for(background, obj, colour_word, mention))


def render(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> np.ndarray:
    """``[H, W, 3]`` float32 in [0, 1]."""
    c = Canvas(cfg.image_size, cfg.supersample)
    paint_background(c, scene.background, rng, cfg)
    if scene.obj is not None:
        colour = jitter(rng, NAMED_COLOURS[scene.colour], cfg.colour_jitter) if scene.colour else None
        PAINTERS[scene.obj](c, scene.centre[0], scene.centre[1], scene.scale, colour, rng)
    return c.result()


def labels_of(scene: Scene, cfg: WorldConfig) -> np.ndarray:
    """Multi-hot ``[len(cfg.labels)]`` float32: the object (if any) and the background."""
    y = np.zeros(len(cfg.labels), dtype=np.float32)
    if scene.obj is not None:
        y[cfg.labels.index(scene.obj)] = 1.0
    y[cfg.labels.index(scene.background)] = 1.0
    return y


def render_batch(rng: np.random.Generator, n: int, cfg: WorldConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``n`` fresh scenes: images ``[n, 3, H, W]`` in [-1, 1], labels ``[n, L]``, captions."""
    images = np.empty((n, 3, cfg.image_size, cfg.image_size), dtype=np.float32)
    labels = np.empty((n, len(cfg.labels)), dtype=np.float32)
    captions = []
    for i in range(n):
        scene = sample_scene(rng, cfg)
        images[i] = render(scene, rng, cfg).transpose(2, 0, 1) * 2.0 - 1.0
        labels[i] = labels_of(scene, cfg)
        captions.append(scene.caption)
    return images, labels, captions


def vocabulary(cfg: WorldConfig) -> list[str]:
    """Every word the caption grammar can produce, sorted."""
    words = {"a"}
    for text in list(BACKGROUND_ALONE.values()) + list(BACKGROUND_AFTER_OBJECT.values()):
        words.update(text.split())
    words.update(cfg.objects)
    for colours in cfg.object_colours.values():
        words.update(colours)
    return sorted(words)
