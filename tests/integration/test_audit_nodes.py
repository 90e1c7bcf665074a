"""The audit and comparison-grid nodes in a real ComfyUI server (CPU), random-weight SD1.5 at 64x64.

Skipped with the reason when ``COMFYUI_PATH`` is not set up (see ``comfy_harness``). One graph erases
*boat* (CARE: water), samples a comparison grid of four tagged concepts over two seeds from the original
and erased MODEL, audits the pair (with the grid's samples) and an identical pair, and re-lays the
samples with the grid-from-batches node.
"""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from tests.integration.comfy_harness import CHECKPOINT, ComfyServer

AUDIT_NODES = {"CAREComparisonGrid", "CAREGridFromBatches", "CAREAudit"}
SIZE = 64
CELL = 64
SEEDS = "0, 1"
CONCEPTS = ["boat", "water", "tree", "house"]  # target, CARE, retained (unrelated), extra unrelated
KEEP_DIR = Path("/tmp/care_audit_nodes")  # the images are copied here for a look by eye


def _graph() -> dict:
    ckpt = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}
    probes = {"prompts": "", "unrelated": "house", "template": "a photo of {}", "concepts": ["concepts", 0]}
    return {
        "ckpt": ckpt,
        "concepts": {"class_type": "CAREConceptSet", "inputs": {
            "targets": "boat", "retained": "tree", "care": "water", "templates": "{}",
            "retain_weight": 1.0, "care_weight": 2.0, "contexts": ""}},
        "erase": {"class_type": "CAREErase", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "concepts": ["concepts", 0], "erase_scale": 1.0,
            "retain_weight": 1.0, "context_weight": 1.0, "lambda_": 0.1, "strict": False,
            "token_scope": "concept_to_eos", "sites": "auto"}},
        "grid": {"class_type": "CAREComparisonGrid", "inputs": {
            "model_original": ["ckpt", 0], "model_erased": ["erase", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2],
            **probes, "seeds": SEEDS, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "width": SIZE, "height": SIZE, "negative": "", "cell": CELL}},
        "save_grid": {"class_type": "SaveImage", "inputs": {"images": ["grid", 0], "filename_prefix": "audit_grid"}},
        "audit": {"class_type": "CAREAudit", "inputs": {
            "model_original": ["ckpt", 0], "model_erased": ["erase", 0], "clip": ["ckpt", 1], **probes,
            "samples": ["grid", 1], "denoiser_drift": True, "drift_seeds": "0", "drift_timesteps": 2, "width": SIZE, "height": SIZE,
            "clip_classifier": ""}},
        "save_table": {"class_type": "SaveImage", "inputs": {"images": ["audit", 2], "filename_prefix": "audit_table"}},
        "save_bars": {"class_type": "SaveImage", "inputs": {"images": ["audit", 3], "filename_prefix": "audit_bars"}},
        "same": {"class_type": "CAREAudit", "inputs": {
            "model_original": ["ckpt", 0], "model_erased": ["ckpt", 0], "clip": ["ckpt", 1], **probes,
            "denoiser_drift": True, "drift_seeds": "0", "drift_timesteps": 2, "width": SIZE, "height": SIZE, "clip_classifier": ""}},
        "batches": {"class_type": "CAREGridFromBatches", "inputs": {
            "images_a": ["grid", 2], "rows": "target: boat\ncare: water\nunrelated: tree\nunrelated: house",
            "label_a": "original then erased", "label_b": "", "columns": "o0, o1, e0, e1", "title": "from batches",
            "cell": 32}},
        "save_batches": {"class_type": "SaveImage", "inputs": {"images": ["batches", 0], "filename_prefix": "audit_batches"}},
    }  # fmt: skip


def _rows(text: str) -> dict[str, list[str]]:
    """Concept -> [tag, metric values...] from the audit's text table."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in CONCEPTS and len(parts) > 2:
            out[parts[0]] = parts[1:]
    return out


def _saved(entry: dict, server: ComfyServer, node: str) -> Path:
    items = entry["outputs"][node]["images"]
    assert len(items) == 1
    path = server.output_file(items[0])
    KEEP_DIR.mkdir(parents=True, exist_ok=True)
    (KEEP_DIR / f"{node}.png").write_bytes(path.read_bytes())
    return path


def test_audit_nodes_are_registered_and_described(server):
    info = server.object_info()
    assert AUDIT_NODES <= set(info), f"missing: {AUDIT_NODES - set(info)}"
    for name in AUDIT_NODES:
        node = info[name]
        assert node["description"].strip(), f"{name} has no description"
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"


def test_grid_and_audit_on_random_sd15(server):
    entry = server.run(_graph(), timeout=1800)  # minutes on a loaded 2-core machine

    with Image.open(_saved(entry, server, "save_grid")) as grid:
        # 4 rows of CELL px and 4 columns (2 models x 2 seeds) of CELL px, plus labels
        assert grid.width > 4 * CELL and grid.height > 4 * CELL
        pixels = grid.convert("RGB")
        assert (205, 45, 45) in {c for _, c in pixels.getcolors(1 << 20)}  # the TARGET chip/frame colour
    with Image.open(_saved(entry, server, "save_batches")) as again:
        assert again.width > 4 * 32 and again.height > 4 * 32
    for node in ("save_table", "save_bars"):
        with Image.open(_saved(entry, server, node)) as img:
            assert img.width > 100 and img.height > 100

    text = "\n".join(entry["outputs"]["audit"]["text"])
    rows = _rows(text)
    assert set(rows) == set(CONCEPTS), text
    assert [rows[c][0] for c in CONCEPTS] == ["target", "care", "unrelated", "unrelated"]
    header = text.splitlines()[0]
    assert "site drift" in header and "denoiser drift" in header and "SSIM" in header
    site = {c: float(rows[c][1]) for c in CONCEPTS}
    denoiser = {c: float(rows[c][2]) for c in CONCEPTS}
    # random weights: the erasure of boat moves boat most at the sites; the protected CARE concept less
    assert site["boat"] == max(site.values()) and site["boat"] > 0.0, text
    assert site["water"] < site["boat"], text
    assert denoiser["boat"] > 0.0, text

    same = _rows("\n".join(entry["outputs"]["same"]["text"]))
    for c in CONCEPTS:
        assert float(same[c][1]) == 0.0 and float(same[c][2]) == 0.0, same
    assert re.search(r"site drift", "\n".join(entry["outputs"]["same"]["text"]))
