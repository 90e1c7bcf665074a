"""A stand-in for ComfyUI's ``comfy_api.latest`` with just enough of the V3 schema API to build node
schemas and call ``execute`` without ComfyUI. Schemas come back as plain dicts, inputs and outputs as
dicts naming their kind, so tests can check tooltips and descriptions. When the real ``comfy_api`` is
importable it is used instead (nothing is stubbed)."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

KINDS = ("Model", "Clip", "Vae", "Combo", "String", "Int", "Float", "Image", "Boolean", "Latent")


class Kind:
    def __init__(self, name: str = "") -> None:
        self.name = name

    def Input(self, name: str, **kw):  # noqa: N802 - mirrors the V3 API
        return {"input": name, "kind": self.name, **kw}

    def Output(self, **kw):  # noqa: N802
        return {"output": self.name, **kw}


class NodeOutput:
    def __init__(self, *args, ui=None) -> None:
        self.args, self.ui = args, ui


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the stand-in into ``sys.modules`` for this test (no-op when ComfyUI's own is importable)."""
    if importlib.util.find_spec("comfy_api") is not None:
        return
    io = types.SimpleNamespace(
        ComfyNode=type("ComfyNode", (), {}), Schema=lambda **kw: kw, NodeOutput=NodeOutput, Custom=Kind,
        **{k: Kind(k) for k in KINDS},
    )
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ui = io, types.SimpleNamespace(PreviewText=lambda text: text)
    monkeypatch.setitem(sys.modules, "comfy_api", types.ModuleType("comfy_api"))
    monkeypatch.setitem(sys.modules, "comfy_api.latest", latest)


def install_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Also stand in for the two ComfyUI core modules some schemas read (``folder_paths`` for file lists,
    ``comfy.samplers`` for sampler names), when ComfyUI is not importable."""
    if importlib.util.find_spec("folder_paths") is not None:
        return
    folder_paths = types.ModuleType("folder_paths")
    folder_paths.get_filename_list = lambda kind: []
    samplers = types.ModuleType("comfy.samplers")
    samplers.KSampler = types.SimpleNamespace(SAMPLERS=["euler"], SCHEDULERS=["normal"])
    comfy = types.ModuleType("comfy")
    comfy.samplers = samplers
    for name, module in (("folder_paths", folder_paths), ("comfy", comfy), ("comfy.samplers", samplers)):
        monkeypatch.setitem(sys.modules, name, module)


def fresh_import(name: str, also: tuple[str, ...] = ()) -> types.ModuleType:
    """Import ``name`` anew (after :func:`install`), dropping it and ``also`` from the module cache first."""
    for module in (name, *also):
        sys.modules.pop(module, None)
    return importlib.import_module(name)


def forget(*names: str) -> None:
    for module in names:
        sys.modules.pop(module, None)
