"""Every node the pack registers describes itself: a description, a tooltip on every input and output,
and a ``CARE`` id. Built against the V3 stand-in of ``tests/comfy_stub.py`` (the real server check is
``tests/integration/test_comfyui_server.py``)."""

from __future__ import annotations

import importlib.util

import pytest

from tests import comfy_stub

NODE_MODULES = ("nodes.care_nodes", "nodes.audit", "nodes.neighbors", "nodes.finetune")


@pytest.fixture
def schemas(monkeypatch):
    if importlib.util.find_spec("comfy_api") is not None:
        pytest.skip("ComfyUI's own comfy_api is importable: tests/integration checks the real schemas")
    comfy_stub.install(monkeypatch)
    comfy_stub.install_core(monkeypatch)
    modules = [comfy_stub.fresh_import(name) for name in NODE_MODULES]
    yield [node.define_schema() for module in modules for node in module.NODES]
    comfy_stub.forget(*NODE_MODULES)


def test_every_node_has_an_id_a_description_and_tooltips(schemas) -> None:
    ids = [s["node_id"] for s in schemas]
    assert len(ids) == len(set(ids)) and len(ids) >= 12, ids
    for schema in schemas:
        assert schema["node_id"].startswith("CARE"), schema["node_id"]
        assert schema["description"].strip(), schema["node_id"]
        for item in schema["inputs"] + schema["outputs"]:
            assert (item.get("tooltip") or "").strip(), (schema["node_id"], item)


def test_shared_widgets_keep_their_ranges(schemas) -> None:
    inputs = {(s["node_id"], i["input"]): i for s in schemas for i in s["inputs"]}
    width = inputs["CAREAudit", "width"]
    assert (width["min"], width["step"], width["default"]) == (64, 8, 512)
    assert inputs["CAREConceptSet", "care_weight"]["min"] == 0.0 and inputs["CAREConceptSet", "targets"]["multiline"]
    assert inputs["CAREMergeConcepts", "more_care"]["optional"] and inputs["CAREErase", "erase_scale"]["max"] == 100.0
