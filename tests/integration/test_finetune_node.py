"""CARE Fine-tune Erase in a real ComfyUI server (CPU) on the random-weight SD1.5 checkpoint.

A handful of iterations at 64x64 images (8x8 latents): the node trains through ComfyUI's own
``apply_model`` under the server's inference mode, returns a patched clone (the original MODEL keeps no
patch and its weights stay equal to the file, checked after the original is loaded again for sampling),
and its erasure is saved by the pack's LoRA save node like a closed-form one. Skipped with the reason
when ``COMFYUI_PATH`` is not set up (see ``comfy_harness``).
"""

from __future__ import annotations

import json

from tests.integration.comfy_harness import CHECKPOINT

NODE = "CAREFinetuneErase"
SIZE = 64
SD15_KV_SITES = 32  # 16 attn2 layers x (to_k, to_v)
TRAIN = {
    "parameter_set": "kv", "rank": 2, "iterations": 2, "learning_rate": 1e-3, "eta": 1.0, "retain_scale": 1.0,
    "context_scale": 1.0, "batch_size": 1, "sample_steps": 1, "pool_seeds": 1, "guidance": 3.0, "width": SIZE,
    "height": SIZE, "seed": 0, "mixed_precision": True, "gradient_checkpointing": "auto",
}  # fmt: skip


def test_node_is_described(server):
    info = server.object_info()
    assert NODE in info
    node = info[NODE]
    assert node["description"].strip() and node["category"] == "CARE erasure"
    for section in ("required", "optional"):
        for name, spec in node["input"].get(section, {}).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{NODE}.{name} has no tooltip"


def test_finetune_trains_a_lora_on_a_clone_and_leaves_the_model_untouched(server):
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "concepts": {
            "class_type": "CAREConceptSet",
            "inputs": {"targets": "boat", "retained": "", "care": "water", "templates": "{}", "retain_weight": 1.0,
                       "care_weight": 2.0, "contexts": "a boat on water => water"},
        },
        "tune": {"class_type": NODE, "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "concepts": ["concepts", 0], **TRAIN}},
        "report": {"class_type": "CAREShowReport", "inputs": {"erasure": ["tune", 1]}},
        "save": {"class_type": "CARESaveErasureLoRA",
                 "inputs": {"erasure": ["tune", 1], "filename": "finetuned_boat", "key_format": "comfy", "overwrite": True}},
        "probe": {"class_type": "ProbeCAREWeights",
                  "inputs": {"original": ["ckpt", 0], "erased": ["tune", 0], "ckpt_name": CHECKPOINT, "name": "probe_ft"}},
    }  # fmt: skip
    entry = server.run(g, timeout=1500)
    text = "\n".join(entry["outputs"].get("report", {}).get("text", []))
    assert "erase" in text and "s_per_iteration" in text, text[:300]
    probe = json.loads((server.base / "output" / "probe_ft.json").read_text())
    assert probe["erased_patched_keys"] == SD15_KV_SITES
    assert probe["original_patches_on_sites"] == 0
    assert probe["original_max_abs_diff_vs_file"] == 0.0
    assert probe["erased_max_rel_delta"] > 0.0
    saved = server.base / "models" / "loras" / "finetuned_boat.safetensors"
    assert saved.is_file()
    from erasure.delta import load_delta

    delta = load_delta(saved)
    assert delta.metadata["method"] == "finetune_esd_care" and len(delta.updates) == SD15_KV_SITES
