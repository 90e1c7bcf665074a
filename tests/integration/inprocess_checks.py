"""Adapters on real ComfyUI objects, in one ComfyUI process (run with ComfyUI's python, not pytest's).

usage: COMFYUI_PATH=... $COMFYUI_PYTHON inprocess_checks.py PACK_DIR SD15_CHECKPOINT OUT.json

Loads the pack as ComfyUI does (a package of any name), the random SD1.5 checkpoint and, when present in
``$COMFYUI_PATH/models`` (``make_random_model.py --family sd3 --tiny-t5`` / ``--family sdxl`` write them),
the random SDXL checkpoint, SD3 diffusion model and CLIP-L/CLIP-G/tiny-T5 text encoders. FLUX's denoiser
is built in memory from ComfyUI's own ``supported_models.Flux`` (one double block). Every check writes its
figures into OUT.json; ``test_adapters_comfyui.py`` asserts on them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback

PACK, SD15, OUT = sys.argv[1:4]
COMFY = os.environ["COMFYUI_PATH"]
sys.path.insert(0, COMFY)
os.chdir(COMFY)
import comfy.cli_args  # noqa: E402

comfy.cli_args.args.cpu = True
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import torch  # noqa: E402

# the module name ComfyUI gives a custom-node folder: its path with dots replaced
spec = importlib.util.spec_from_file_location(PACK.replace(".", "_x_"), os.path.join(PACK, "__init__.py"),
                                              submodule_search_locations=[PACK])  # fmt: skip
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
adapters = importlib.import_module(f"{spec.name}.nodes.adapters")
engine_erase = importlib.import_module(f"{spec.name}.erasure.erase")
engine_concepts = importlib.import_module(f"{spec.name}.erasure.concepts")
engine_audit = importlib.import_module(f"{spec.name}.erasure.audit")
audit_nodes = importlib.import_module(f"{spec.name}.nodes.audit")

MODELS = os.path.join(COMFY, "models")
TE = {k: os.path.join(MODELS, "text_encoders", f"random_{k}.safetensors") for k in ("clip_l", "clip_g", "t5xxl_tiny")}
TINY_T5 = {"num_layers": 2, "num_heads": 2, "d_ff": 256}
PROMPTS = ["a photo of a sailing boat on the water", "boat", "a photo of", "", "harbour at night, oil painting"]
PHRASES = ["sailing boat", "boat", "", "", "harbour"]
results: dict = {"skipped": {}}


ONLY = set(filter(None, os.environ.get("CARE_INPROCESS_ONLY", "").split(",")))  # e.g. "flux,sd3" for a quick run


def check(name):
    def wrap(fn):
        if ONLY and name not in ONLY:
            results["skipped"][name] = "not selected (CARE_INPROCESS_ONLY)"
            return fn
        started = time.time()
        try:
            results[name] = fn()
            results[name]["seconds"] = round(time.time() - started, 2)
        except FileNotFoundError as err:
            results["skipped"][name] = str(err)
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
        with open(OUT, "w") as f:
            json.dump(results, f, indent=2)
        return fn

    return wrap


def need(*paths):
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found (make_random_model.py writes it)")


def encoder_figures(clip, truncate_too=True):
    """Rows, positions and agreement with CLIPTextEncode; truncated vs full rows when truncation applies."""
    full = adapters.ComfyTextEncoder(clip).encode(PROMPTS, PHRASES)
    out = {
        "text_model": type(clip.cond_stage_model).__name__,
        "width": int(full[0].vectors.shape[-1]),
        "rows": [int(e.vectors.shape[0]) for e in full],
        "phrase": [e.phrase.tolist() for e in full],
        "tail": [e.tail.tolist() for e in full],
    }
    sampler_rows = [clip.encode_from_tokens(clip.tokenize(p))[0].float() for p in PROMPTS]
    # SD1/SDXL prompts without weights: CLIPTextEncode tokenizes the same way (disable_weights changes nothing)
    out["max_diff_vs_clip_text_encode"] = max(float((e.vectors - s).abs().max()) for e, s in zip(full, sampler_rows))
    single = adapters.ComfyTextEncoder(clip, batch_size=1).encode(PROMPTS, PHRASES)
    out["max_diff_batched_vs_single"] = max(float((a.vectors - b.vectors).abs().max()) for a, b in zip(full, single))
    if truncate_too:
        enc = adapters.ComfyTextEncoder(clip, truncate=True)
        tables = {n: (p, p.detach().clone()) for n, p in enc._positions.items()}
        short = enc.encode(PROMPTS, PHRASES)
        out["truncating"] = enc.truncating
        out["truncated_rows"] = [int(e.vectors.shape[0]) for e in short]
        diffs = []
        for a, b in zip(short, full):
            used = torch.cat([a.phrase, a.tail])
            assert torch.equal(a.phrase, b.phrase) and torch.equal(a.tail, b.tail)
            diffs.append(float((a.vectors[used] - b.vectors[used]).abs().max() / b.vectors[used].abs().max()))
        out["truncated_max_rel_diff_on_used_rows"] = max(diffs)
        after = dict(clip.cond_stage_model.named_parameters())
        out["position_tables_untouched"] = all(
            after[n] is p and torch.equal(p, copy) for n, (p, copy) in tables.items()
        )
    return out


def erase_and_patch(model, clip, truncate):
    family, sites = adapters.model_edit_sites(model, "auto", adapters.patched_weight_fn(model))
    enc = adapters.ComfyTextEncoder(clip, truncate=truncate)
    adapters.check_widths(enc, sites, family)
    concepts = engine_concepts.ConceptSet.from_text(
        "boat", retained="car\ntree", care="water\nharbour", templates="{}\na photo of {}"
    )
    before = {s.name: s.weight.detach().clone() for s in sites}
    result = engine_erase.erase(sites, enc, concepts, engine_erase.EraseSettings())
    patched, n = adapters.patched_clone(model, result.delta.lora_state_dict("comfy"))
    return {
        "family": family.label,
        "sites": len(sites),
        "site_shape": list(sites[0].weight.shape),
        "patched_keys": n,
        "original_patches": len(model.patches),
        "weights_unchanged": all(torch.equal(s.weight, before[s.name]) for s in sites),
        "residual": result.report.targets[0].residual,
        "max_drift": max(r.drift for r in result.report.retained),
    }, result, patched


def audit_drift(original, erased, clip):
    """The audit node's denoiser drift (its ComfyUI denoiser glue + the engine) at 64x64, one seed."""
    probes = [engine_audit.Probe(c, tag, f"a photo of {c}") for c, tag in (("boat", "target"), ("water", "care"))]
    timesteps = engine_audit.denoiser.probe_timesteps(1000, (0.7,))

    def drift(edited):
        return engine_audit.denoiser_drift(
            audit_nodes._comfy_denoiser(original, clip, 64, 64), audit_nodes._comfy_denoiser(edited, clip, 64, 64),
            probes, seeds=[0], timesteps=timesteps,
        )  # fmt: skip

    return {"erased": dict(zip(["boat", "water"], drift(erased))), "identical": drift(original),
            "unsupported": audit_nodes._drift_unsupported(original)}  # fmt: skip


@check("sd15")
def _sd15():
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(SD15, output_vae=False, output_clip=True)
    out = encoder_figures(clip)
    skip = clip.clone()
    skip.clip_layer(-2)  # "CLIP Set Last Layer" -2
    out["clip_skip"] = {k: v for k, v in encoder_figures(skip).items() if "diff" in k or k == "truncating"}
    erased_full, r_full, _ = erase_and_patch(model, clip, truncate=False)
    erased_trunc, r_trunc, _ = erase_and_patch(model, clip, truncate=True)
    out["erase"] = erased_trunc
    out["erase_truncated_vs_full_max_rel_diff"] = max(
        float((r_trunc.delta.updates[k].dense() - u.dense()).abs().max() / u.dense().abs().max())
        for k, u in r_full.delta.updates.items()
    )
    try:
        sdxl_clip = comfy.sd.load_clip([TE["clip_l"], TE["clip_g"]], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
        family, sites = adapters.model_edit_sites(model)
        adapters.check_widths(adapters.ComfyTextEncoder(sdxl_clip), sites, family)
        out["mismatch_error"] = None
    except adapters.AdapterError as err:
        out["mismatch_error"] = str(err)
    except Exception as err:  # the SDXL text encoders are not there
        out["mismatch_error"] = f"not checked: {err}"
    return out


@check("sdxl_clip")
def _sdxl_clip():
    need(TE["clip_l"], TE["clip_g"])
    clip = comfy.sd.load_clip([TE["clip_l"], TE["clip_g"]], clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION)
    return encoder_figures(clip)


@check("sdxl_model")
def _sdxl_model():
    path = os.path.join(MODELS, "checkpoints", "random_sdxl_tiny.safetensors")
    need(path)
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(path, output_vae=False, output_clip=True)
    out, _, patched = erase_and_patch(model, clip, truncate=True)
    out["denoiser_drift"] = audit_drift(model, patched, clip)
    return out


@check("sd3")
def _sd3():
    need(
        TE["clip_l"],
        TE["clip_g"],
        TE["t5xxl_tiny"],
        os.path.join(MODELS, "diffusion_models", "random_sd3_d2.safetensors"),
    )
    model = comfy.sd.load_diffusion_model(os.path.join(MODELS, "diffusion_models", "random_sd3_d2.safetensors"))
    clip_l = comfy.sd.load_clip([TE["clip_l"]], clip_type=comfy.sd.CLIPType.SD3)
    triple = comfy.sd.load_clip(
        [TE["clip_l"], TE["clip_g"], TE["t5xxl_tiny"]], clip_type=comfy.sd.CLIPType.SD3,
        model_options={"t5xxl_model_config": TINY_T5},
    )  # fmt: skip
    out = {"clip_l_only": encoder_figures(clip_l, truncate_too=False)}
    out["triple"] = encoder_figures(triple, truncate_too=False)
    out["triple"]["truncating"] = adapters.ComfyTextEncoder(triple, truncate=True).truncating
    out["erase"], _, _ = erase_and_patch(model, triple, truncate=True)
    out["drift_unsupported"] = audit_nodes._drift_unsupported(model)
    return out


@check("flux")
def _flux():
    need(TE["clip_l"], TE["t5xxl_tiny"])
    clip = comfy.sd.load_clip(
        [TE["clip_l"], TE["t5xxl_tiny"]],
        clip_type=comfy.sd.CLIPType.FLUX,
        model_options={"t5xxl_model_config": TINY_T5},
    )
    out = encoder_figures(clip, truncate_too=False)
    cfg = {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16, "vec_in_dim": 768,
           "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 1,
           "depth_single_blocks": 0, "axes_dim": [16, 56, 56], "theta": 10000, "qkv_bias": True,
           "guidance_embed": True}  # fmt: skip
    config = comfy.supported_models.Flux(cfg)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({}, device="cpu")
    # ComfyUI builds layers without initialising them: give the weights defined values (seeded)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in base.diffusion_model.named_parameters():
            p.zero_() if not name.startswith("txt_in.") else p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    dev = comfy.model_management.get_torch_device()
    model = comfy.model_patcher.ModelPatcher(base, load_device=dev, offload_device=dev)
    out["erase"], _, _ = erase_and_patch(model, clip, truncate=True)
    return out


print(json.dumps(results)[:2000])
