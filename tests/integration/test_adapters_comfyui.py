"""The adapters on real ComfyUI 0.3.64 objects: SD1.5, SDXL, SD3 and FLUX text encoders and denoisers.

Runs ``inprocess_checks.py`` once with ComfyUI's python (the random-weight models of
``shared/testing/make_random_model.py``; SDXL/SD3/FLUX parts are skipped, with the reason, when their files
are not in ``$COMFYUI_PATH/models``) and asserts on the figures it writes.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.integration.comfy_harness import HERE, REPO, comfy_or_skip

PROMPTS_PHRASE_SD1 = [[5, 6], [1], [], [], [1]]  # see inprocess_checks.PROMPTS: "a photo of a |sailing boat| ..."


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    env, reason = comfy_or_skip()
    if env is None:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("inprocess") / "figures.json"
    run = subprocess.run(
        [str(env.python), str(HERE / "inprocess_checks.py"), str(REPO), str(env.checkpoint), str(out)],
        env={**os.environ, "COMFYUI_PATH": str(env.root)},
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert out.is_file(), run.stderr[-3000:]
    data = json.loads(out.read_text())
    for name, value in data.items():
        if isinstance(value, dict) and "error" in value:
            pytest.fail(f"{name} failed in ComfyUI:\n{value['error']}")
    return data


def _part(figures, name):
    if name in figures["skipped"]:
        pytest.skip(figures["skipped"][name])
    return figures[name]


def test_sd15_text_encoder_rows_positions_and_truncation(figures):
    sd = _part(figures, "sd15")
    assert sd["text_model"] == "SD1ClipModel" and sd["width"] == 768 and sd["rows"] == [77] * 5
    assert sd["phrase"] == PROMPTS_PHRASE_SD1
    assert sd["tail"][0] == [7, 8, 9, 10]  # "on the water" + end-of-text
    assert sd["max_diff_vs_clip_text_encode"] == 0.0  # exactly what CLIPTextEncode gives the sampler
    assert sd["max_diff_batched_vs_single"] == 0.0
    assert sd["truncating"] and max(sd["truncated_rows"]) < 77
    assert sd["truncated_max_rel_diff_on_used_rows"] < 1e-5
    assert sd["position_tables_untouched"]
    assert sd["clip_skip"]["truncating"] and sd["clip_skip"]["truncated_max_rel_diff_on_used_rows"] < 1e-5
    assert sd["clip_skip"]["max_diff_vs_clip_text_encode"] == 0.0


def test_sd15_erase_and_clone(figures):
    sd = _part(figures, "sd15")
    e = sd["erase"]
    assert (e["family"], e["sites"], e["site_shape"], e["patched_keys"]) == ("SD1.x", 32, [320, 768], 32)
    assert e["original_patches"] == 0 and e["weights_unchanged"]
    assert sd["erase_truncated_vs_full_max_rel_diff"] < 1e-4


def test_mismatched_clip_names_both_widths(figures):
    msg = _part(figures, "sd15")["mismatch_error"]
    if msg.startswith("not checked"):
        pytest.skip(msg)
    assert "2048-wide" in msg and "SD1.x MODEL" in msg and "768" in msg


def test_sdxl_text_encoder_and_model(figures):
    clip = _part(figures, "sdxl_clip")
    assert clip["text_model"] == "SDXLClipModel" and clip["width"] == 2048
    assert clip["phrase"] == PROMPTS_PHRASE_SD1
    assert clip["max_diff_vs_clip_text_encode"] == 0.0 and clip["truncated_max_rel_diff_on_used_rows"] < 1e-5
    model = _part(figures, "sdxl_model")
    assert (model["family"], model["sites"], model["site_shape"]) == ("SDXL", 62, [320, 2048])
    assert model["patched_keys"] == 62 and model["weights_unchanged"]
    drift = model["denoiser_drift"]  # the audit node's glue passes SDXL its pooled-vector y
    assert drift["unsupported"] is None and drift["identical"] == [0.0, 0.0]
    assert drift["erased"]["boat"] > 0.0 and drift["erased"]["water"] >= 0.0


def test_sd3_clip_only_and_clip_plus_t5_layouts(figures):
    sd3 = _part(figures, "sd3")
    lonly, triple = sd3["clip_l_only"], sd3["triple"]
    assert lonly["width"] == 4096 and lonly["rows"] == [77] * 5 and lonly["phrase"] == PROMPTS_PHRASE_SD1
    # CLIP rows, then T5 rows: the phrase is found in both ("▁", "a", "▁photo", "▁of", "▁", "a", ...)
    assert triple["rows"][0] > 77 and triple["phrase"][0] == [5, 6, 77 + 6, 77 + 7]
    assert not triple["truncating"]  # T5 sees every position
    assert triple["max_diff_vs_clip_text_encode"] == 0.0 and triple["max_diff_batched_vs_single"] == 0.0
    e = sd3["erase"]
    assert (e["family"], e["sites"], e["site_shape"], e["patched_keys"]) == ("SD3", 1, [128, 4096], 1)
    assert e["weights_unchanged"]
    assert "flow-matching" in sd3["drift_unsupported"] and "SD3" in sd3["drift_unsupported"]


def test_flux_t5_rows_and_txt_in(figures):
    flux = _part(figures, "flux")
    assert flux["text_model"].startswith("FluxClipModel") and flux["width"] == 4096
    assert flux["phrase"][0] == [6, 7] and flux["tail"][0] == [8, 9, 10, 11]
    assert flux["max_diff_vs_clip_text_encode"] == 0.0
    e = flux["erase"]
    assert (e["family"], e["sites"], e["site_shape"], e["patched_keys"]) == ("FLUX", 1, [3072, 4096], 1)
    assert e["weights_unchanged"]
