"""The pack in a real ComfyUI server (CPU) with a random-weight SD1.5 checkpoint.

Skipped with the reason when ``COMFYUI_PATH`` is not set up (see ``comfy_harness``). One server is started
for the module on a free 127.0.0.1 port with the pack linked into a temporary ``custom_nodes`` under a
folder name that is not a Python identifier.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.integration.comfy_harness import (
    CHECKPOINT,
    PACK_DIR_NAME,
    REPO,
    ComfyServer,
    PromptFailed,
    load_workflow,
    ui_to_api,
)

EXAMPLES = REPO / "example_workflows"
CARE_NODES = {
    "CAREConceptSet",
    "CAREMergeConcepts",
    "CAREErase",
    "CAREShowReport",
    "CARESaveErasureLoRA",
    "CARELoadErasureLoRA",
}
SIZE = 64  # sample 64x64 latents in 2 steps: the pipeline runs, quickly, on random weights
QUICK = {
    "CheckpointLoaderSimple": {"ckpt_name": CHECKPOINT},
    "EmptyLatentImage": {"width": SIZE, "height": SIZE, "batch_size": 1},
    "KSampler": {"steps": 2},
}
# examples that need a file another example writes come after it
EXAMPLE_ORDER = ["care_erase_side_by_side", "care_merge_strict_save_lora", "care_load_erasure_lora"]


def _images(entry: dict, server: ComfyServer, node_id: str) -> list[Path]:
    return [server.output_file(i) for i in entry["outputs"].get(node_id, {}).get("images", [])]


def _text(entry: dict, node_id: str) -> str:
    return "\n".join(entry["outputs"].get(node_id, {}).get("text", []))


# --------------------------------------------------------------------------------------------- loading
def test_pack_loads_with_every_node_described(server):
    info = server.object_info()
    assert CARE_NODES <= set(info), f"missing: {CARE_NODES - set(info)}"
    for name in sorted(n for n in info if n.startswith("CARE")):
        node = info[name]
        assert node["description"].strip(), f"{name} has no description"
        assert node["category"].startswith("CARE erasure")
        for section in ("required", "optional"):
            for input_name, spec in node["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
    log = server.log()
    assert "IMPORT FAILED" not in "\n".join(line for line in log.splitlines() if PACK_DIR_NAME in line)
    assert f"/extensions/{PACK_DIR_NAME}/care.js" in server.get("/extensions")
    templates = server.get("/api/workflow_templates")
    assert sorted(templates.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in EXAMPLES.glob("*.json"))


# --------------------------------------------------------------------------------------------- examples
def test_every_example_workflow_runs(server):
    files = {p.stem: p for p in EXAMPLES.glob("*.json")}
    assert set(EXAMPLE_ORDER) <= set(files)
    info = server.object_info()
    for name in EXAMPLE_ORDER + sorted(set(files) - set(EXAMPLE_ORDER)):
        workflow = load_workflow(files[name])
        missing = {n["type"] for n in workflow["nodes"]} - set(info) - {"Note", "MarkdownNote", "Reroute"}
        assert not missing, f"{name}: unknown node types {missing}"
        prompt = ui_to_api(workflow, info, QUICK)
        entry = server.run(prompt)
        saves = [nid for nid, n in prompt.items() if n["class_type"] == "SaveImage"]
        assert saves, f"{name} saves no image"
        for nid in saves:
            paths = _images(entry, server, nid)
            assert paths and all(p.is_file() for p in paths), f"{name}: no image written by node {nid}"
            if name in EXAMPLE_ORDER:
                with Image.open(paths[0]) as img:
                    # original | 16 px spacing | erased
                    assert img.size == (2 * SIZE + 16, SIZE), f"{name}: side-by-side image is {img.size}"
        for nid, node in prompt.items():
            if node["class_type"] == "CAREShowReport":
                text = _text(entry, nid)
                assert "residual" in text and "drift" in text, f"{name}: report text missing: {text[:200]}"
            if node["class_type"] == "CARESaveErasureLoRA":
                saved = server.base / "models" / "loras" / (node["inputs"]["filename"] + ".safetensors")
                assert saved.is_file(), f"{name}: LoRA not written to {saved}"
            if node["class_type"] == "CARELoadErasureLoRA":
                assert "boat" in _text(entry, nid)


# --------------------------------------------------------------------------------------------- built here
def _erase_graph(lora_file: str | None = None, strict: bool = False) -> dict:
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "concepts": {
            "class_type": "CAREConceptSet",
            "inputs": {
                "targets": "boat\nsports car -> car",
                "retained": "dog\ntree\nhouse : 1.5",
                "care": "water\nsea\nroad",
                "templates": "{}\na photo of {}",
                "retain_weight": 1.0,
                "care_weight": 2.0,
                "contexts": "a boat on the water => water",
            },
        },
        "erase": {
            "class_type": "CAREErase",
            "inputs": {
                "model": ["ckpt", 0],
                "clip": ["ckpt", 1],
                "concepts": ["concepts", 0],
                "erase_scale": 1.0,
                "retain_weight": 1.0,
                "context_weight": 1.0,
                "lambda_": 0.1,
                "strict": strict,
                "token_scope": "concept_to_eos",
                "sites": "auto",
            },
        },  # fmt: skip
        "report": {"class_type": "CAREShowReport", "inputs": {"erasure": ["erase", 1]}},
    }
    if lora_file:
        g["save"] = {
            "class_type": "CARESaveErasureLoRA",
            "inputs": {"erasure": ["erase", 1], "filename": lora_file, "key_format": "comfy", "overwrite": True},
        }
    return g


def _sample(g: dict, model: list, tag: str, seed: int = 7) -> str:
    g[f"pos_{tag}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat on the water", "clip": ["ckpt", 1]}}
    g[f"neg_{tag}"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["ckpt", 1]}}
    g[f"lat_{tag}"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
    g[f"ks_{tag}"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": model, "seed": seed, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "positive": [f"pos_{tag}", 0], "negative": [f"neg_{tag}", 0], "latent_image": [f"lat_{tag}", 0],
        },
    }  # fmt: skip
    g[f"dec_{tag}"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"ks_{tag}", 0], "vae": ["ckpt", 2]}}
    g[f"save_{tag}"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [f"dec_{tag}", 0], "filename_prefix": f"t_{tag}"},
    }
    return f"save_{tag}"


def _pixels(path: Path) -> bytes:
    with Image.open(path) as img:
        return img.convert("RGB").tobytes()


def test_original_untouched_and_exported_lora_matches_in_graph_erase(server):
    # 1. baseline: the original model alone
    g0 = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}}
    base_node = _sample(g0, ["ckpt", 0], "baseline")
    baseline = _images(server.run(g0), server, base_node)[0]
    server.post("/free", {"unload_models": True, "free_memory": True})  # recompute everything below

    # 2. erase, save the LoRA, sample original and erased, probe the weights after sampling
    g1 = _erase_graph(lora_file="probe_erasure")
    orig_node = _sample(g1, ["ckpt", 0], "orig")
    erased_node = _sample(g1, ["erase", 0], "erased")
    g1["probe"] = {
        "class_type": "ProbeCAREWeights",
        "inputs": {"original": ["ckpt", 0], "erased": ["erase", 0], "ckpt_name": CHECKPOINT, "name": "probe1",
                   "after": ["dec_erased", 0]},
    }  # fmt: skip
    entry = server.run(g1)
    assert "boat" in _text(entry, "report")
    original_img = _images(entry, server, orig_node)[0]
    erased_img = _images(entry, server, erased_node)[0]
    assert _pixels(original_img) == _pixels(baseline), "the original model samples differently after erasure"
    assert _pixels(erased_img) != _pixels(original_img), "the erased model samples exactly like the original"
    probe1 = json.loads((server.base / "output" / "probe1.json").read_text())
    assert probe1["erased_patched_keys"] == 32  # SD1.5: 16 attn2 layers x (to_k, to_v)
    assert probe1["original_patches_on_sites"] == 0
    assert probe1["original_weights_compared"] > 600
    assert probe1["original_max_abs_diff_vs_file"] == 0.0
    assert probe1["erased_max_rel_delta"] > 1e-4

    # 3. the saved file through the stock LoraLoaderModelOnly gives the same patched weights
    assert (server.base / "models" / "loras" / "probe_erasure.safetensors").is_file()
    g2 = _erase_graph()
    g2["stock"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["ckpt", 0], "lora_name": "probe_erasure.safetensors", "strength_model": 1.0},
    }
    g2["probe"] = {
        "class_type": "ProbeCAREWeights",
        "inputs": {"original": ["ckpt", 0], "erased": ["erase", 0], "lora": ["stock", 0],
                   "ckpt_name": CHECKPOINT, "name": "probe2"},
    }  # fmt: skip
    server.run(g2)
    probe2 = json.loads((server.base / "output" / "probe2.json").read_text())
    assert probe2["lora_same_keys"] is True and probe2["lora_patched_keys"] == 32
    assert probe2["lora_max_rel_diff"] < 1e-4, probe2
    assert probe2["lora_max_rel_diff_of_delta"] < 1e-4, probe2
    assert probe2["original_max_abs_diff_vs_file"] == 0.0


def test_care_loader_matches_stock_loader_and_strict_mode_runs(server):
    g = _erase_graph(lora_file="strict_erasure", strict=True)
    g["save_kohya"] = {
        "class_type": "CARESaveErasureLoRA",
        "inputs": {"erasure": ["erase", 1], "filename": "strict_kohya", "key_format": "kohya", "overwrite": True},
    }
    entry = server.run(g)
    assert "protected_rank" in _text(entry, "report")
    g2 = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "care": {
            "class_type": "CARELoadErasureLoRA",
            "inputs": {"model": ["ckpt", 0], "lora_name": "strict_erasure.safetensors", "strength": 1.0},
        },
        "stock": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["ckpt", 0], "lora_name": "strict_erasure.safetensors", "strength_model": 1.0},
        },
        "probe": {
            "class_type": "ProbeCAREWeights",
            "inputs": {
                "original": ["ckpt", 0],
                "erased": ["care", 0],
                "lora": ["stock", 0],
                "ckpt_name": CHECKPOINT,
                "name": "probe3",
            },
        },  # fmt: skip
    }
    g2["kohya"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["ckpt", 0], "lora_name": "strict_kohya.safetensors", "strength_model": 1.0},
    }
    g2["probe_kohya"] = {
        "class_type": "ProbeCAREWeights",
        "inputs": {"original": ["ckpt", 0], "erased": ["care", 0], "lora": ["kohya", 0],
                   "ckpt_name": CHECKPOINT, "name": "probe4"},
    }  # fmt: skip
    entry = server.run(g2)
    assert "boat" in _text(entry, "care") and "closed_form_strict" in _text(entry, "care")
    probe = json.loads((server.base / "output" / "probe3.json").read_text())
    assert probe["erased_patched_keys"] == 32 and probe["lora_max_rel_diff"] == 0.0
    kohya = json.loads((server.base / "output" / "probe4.json").read_text())  # kohya keys, stock loader
    assert kohya["lora_same_keys"] and kohya["lora_max_rel_diff"] < 1e-6


# --------------------------------------------------------------------------------------------- errors
def test_user_errors_are_reported_clearly(server):
    g = _erase_graph()
    g["concepts"]["inputs"]["targets"] = "   "
    with pytest.raises(PromptFailed, match="no target concept"):
        server.run(g)

    g = _erase_graph()
    g["concepts"]["inputs"]["retained"] = "boat"
    with pytest.raises(PromptFailed, match="both erased and retained"):
        server.run(g)

    g = _erase_graph(lora_file="../escape")
    with pytest.raises(PromptFailed, match="leaves the loras folder"):
        server.run(g)
    assert not (server.base / "models" / "escape.safetensors").exists()

    g = _erase_graph(lora_file="kept")
    server.run(g)
    g["save"]["inputs"]["overwrite"] = False
    with pytest.raises(PromptFailed, match="already exists"):
        server.run(g)

    g = _erase_graph()
    g["erase"]["inputs"]["sites"] = "text projection"
    with pytest.raises(PromptFailed, match="does not apply to a SD1.x model"):
        server.run(g)


def test_interrupt_stops_a_long_erasure(server):
    g = _erase_graph()
    many = [f"thing number {i}" for i in range(300)]
    g["concepts"]["inputs"]["retained"] = "\n".join(many)
    g["concepts"]["inputs"]["templates"] = "{}\na photo of {}\na painting of {}"
    g["erase"]["inputs"]["lambda_"] = 0.123  # not cached from another test
    queued = server.post("/prompt", {"prompt": g, "client_id": "interrupt-test"})
    pid = queued["prompt_id"]
    deadline = time.time() + 300
    while time.time() < deadline:  # wait until the erase node is running
        if server.get("/queue")["queue_running"]:
            time.sleep(4)
            break
        time.sleep(0.2)
    server.post("/interrupt", {})
    interrupted_at = time.time()
    while time.time() < deadline:
        history = server.get(f"/history/{pid}")
        if history and pid in history and history[pid]["status"].get("completed") is not None:
            break
        time.sleep(0.2)
    stopped_after = time.time() - interrupted_at
    messages = [m[0] for m in history[pid]["status"]["messages"]]
    assert "execution_interrupted" in messages, messages
    assert stopped_after < 60, f"took {stopped_after:.1f}s to stop"
