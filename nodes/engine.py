"""The engine, imported the same way whether this pack is loaded by ComfyUI or by the unit tests.

Inside ComfyUI the repository folder is a package (of any name, e.g. ``custom_nodes/care-erasure``) and the
engine is its subpackage ``erasure``; the unit tests import ``nodes`` and ``erasure`` as top-level packages.
"""

from __future__ import annotations

if __package__ and "." in __package__:  # <pack>.nodes inside ComfyUI: the pack's own engine
    from .. import erasure as _erasure
    from ..erasure import concepts, delta, sites, vectors
else:  # top-level 'nodes' package (unit tests, benchmarks)
    import erasure as _erasure
    from erasure import concepts, delta, sites, vectors

__all__ = ["concepts", "delta", "sites", "vectors", "engine_module"]


def engine_module(name: str):
    """A submodule of the engine by name (``erase``, ``report``...), imported on first use."""
    import importlib

    return importlib.import_module(f"{_erasure.__name__}.{name}")
