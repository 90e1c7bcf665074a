"""Test-only ComfyUI node (loaded only by the integration tests' temporary server, never shipped).

``ProbeCAREWeights`` takes the original MODEL, the MODEL from CARE Erase and optionally the same MODEL with the
saved LoRA loaded by the stock LoraLoaderModelOnly, and writes ``<output>/<name>.json`` with:

* ``original_patches_on_sites``: patches the original ModelPatcher carries on the edited weights (must be 0);
* ``original_max_abs_diff_vs_file``: max |W - W_file| over every diffusion weight of the original MODEL,
  read after loading the original MODEL for sampling (so any patch left applied in place would show);
* ``erased_max_rel_delta``: how much the erase node changes the edited weights (must be > 0);
* ``lora_max_rel_diff``: max |W_erase - W_lora| / max |W_erase| over the edited weights, both computed by
  ComfyUI's own ``comfy.lora.calculate_weight`` from each MODEL's patches;
* ``lora_max_rel_diff_of_delta``: the same difference relative to the size of the change itself.
"""

import json
import os


def _patched(model, key, base):
    import comfy.lora

    return comfy.lora.calculate_weight(model.patches.get(key, []), base.float().clone(), key)


class ProbeCAREWeights:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "original": ("MODEL", {"tooltip": "original"}),
                "erased": ("MODEL", {"tooltip": "erased"}),
                "ckpt_name": ("STRING", {"default": "random_sd15.safetensors"}),
                "name": ("STRING", {"default": "probe"}),
            },
            "optional": {
                "lora": ("MODEL", {"tooltip": "lora-loaded"}),
                "after": ("IMAGE", {"tooltip": "run after this image"}),
            },
        }

    RETURN_TYPES = ()
    FUNCTION = "probe"
    OUTPUT_NODE = True
    CATEGORY = "testing"
    DESCRIPTION = "Test probe"

    def probe(self, original, erased, ckpt_name, name, lora=None, after=None):
        import comfy.model_management
        import folder_paths
        from safetensors import safe_open

        result = {}
        keys = sorted(k for k in erased.patches if k.startswith("diffusion_model."))
        result["erased_patched_keys"] = len(keys)
        result["original_patches_on_sites"] = sum(len(original.patches.get(k, [])) for k in keys)
        base = original.model.state_dict()
        rel_delta, rel_lora, rel_lora_delta = 0.0, 0.0, 0.0
        for k in keys:
            w = base[k].float()
            we = _patched(erased, k, w)
            d = (we - w).abs().max().item()
            rel_delta = max(rel_delta, d / max(w.abs().max().item(), 1e-30))
            if lora is not None:
                wl = _patched(lora, k, w)
                diff = (we - wl).abs().max().item()
                rel_lora = max(rel_lora, diff / max(we.abs().max().item(), 1e-30))
                rel_lora_delta = max(rel_lora_delta, diff / max(d, 1e-30))
        result["erased_max_rel_delta"] = rel_delta
        if lora is not None:
            result["lora_patched_keys"] = sum(1 for k in lora.patches if k.startswith("diffusion_model."))
            result["lora_same_keys"] = sorted(k for k in lora.patches if k.startswith("diffusion_model.")) == keys
            result["lora_max_rel_diff"] = rel_lora
            result["lora_max_rel_diff_of_delta"] = rel_lora_delta
        # the original MODEL as the sampler would use it, compared with the checkpoint file
        comfy.model_management.load_models_gpu([original], force_full_load=True)
        sd = original.model.state_dict()
        worst, compared = 0.0, 0
        with safe_open(folder_paths.get_full_path_or_raise("checkpoints", ckpt_name), framework="pt") as f:
            for fk in f.keys():
                if not fk.startswith("model.diffusion_model."):
                    continue
                k = fk[len("model.") :]
                t = f.get_tensor(fk).float()
                worst = max(worst, (sd[k].float().cpu() - t).abs().max().item())
                compared += 1
        result["original_weights_compared"] = compared
        result["original_max_abs_diff_vs_file"] = worst
        path = os.path.join(folder_paths.get_output_directory(), f"{name}.json")
        with open(path, "w") as fh:
            json.dump(result, fh, indent=2)
        return {"ui": {"text": [json.dumps(result)]}}


NODE_CLASS_MAPPINGS = {"ProbeCAREWeights": ProbeCAREWeights}
