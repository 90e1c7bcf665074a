"""The input widgets the CARE nodes share, so each kind of input looks and behaves the same everywhere.

ComfyUI-only (V3 schema); every function returns one ``io.*.Input``.
"""

from __future__ import annotations

from comfy_api.latest import io

MAX_WEIGHT = 1000.0
MAX_SIDE = 4096  # px: the largest image side a node accepts
LATENT_FACTOR = 8  # px per latent cell (SD-family VAEs): image sides step by it


def text_list(name: str, tooltip: str, *, default: str = "", placeholder: str = "", optional: bool = False):
    """A multi-line text box holding one entry per line (concepts, templates, context pairs)."""
    extra = {"placeholder": placeholder} if placeholder else {}
    return io.String.Input(name, multiline=True, default=default, optional=optional, tooltip=tooltip, **extra)


def weight(name: str, default: float, tooltip: str, *, step: float = 0.1, maximum: float = MAX_WEIGHT,
           optional: bool = False):
    """A non-negative weight or scale."""
    return io.Float.Input(name, default=default, min=0.0, max=maximum, step=step, optional=optional, tooltip=tooltip)


def image_side(name: str, default: int, tooltip: str):
    """An image width or height in pixels, a multiple of the latent cell."""
    return io.Int.Input(name, default=default, min=64, max=MAX_SIDE, step=LATENT_FACTOR, tooltip=tooltip)
