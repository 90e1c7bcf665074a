"""Wall time of one fine-tune iteration at SD1.5 shapes (512x512 images = 64x64x4 latents) on this machine.

    COMFYUI_PATH=/work/comfyui $COMFYUI_PATH/.venv/bin/python benchmarks/finetune_iteration.py [--size 512]

Loads the random-weight SD1.5 checkpoint the integration tests use (ComfyUI's own classes, exact SD1.5
shapes; ``tests/integration/setup_comfyui.sh`` makes it) under ``torch.inference_mode()`` as a ComfyUI server
would, and drives it through the node's :class:`nodes.finetune.ComfyDenoiser` (``apply_model``). Timed:

* ``eps_forward_s``   -- one frozen noise prediction, batch 1 (no gradient);
* ``pool_step_s``     -- one DDIM step of the partial-sampling pool (CFG: batch 2);
* ``iteration_s``     -- one trainer iteration with the three terms, ``batch_size`` 1 each: 5 frozen
  predictions + 3 trained predictions with backward through the adapters (user-latent pool, so no sampling);
* ``iteration_cpu_s`` -- CPU seconds (all threads) of that iteration: on a shared machine the wall time
  depends on the other processes, the CPU time much less;
* peak resident memory of the process.

Writes ``benchmarks/results/finetune_iteration.json`` (+ ``.md``). Random weights: timing only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINT = Path(os.environ.get("CARE_MODEL_CACHE", Path.home() / ".cache" / "care-erasure" / "models")) / "checkpoints" / "random_sd15.safetensors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=512, help="image side in pixels (latents are size/8)")
    p.add_argument("--parameter-set", default="xattn")
    p.add_argument("--checkpointing", default="on", choices=("on", "off", "auto"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    comfy_path = os.environ.get("COMFYUI_PATH")
    if not comfy_path or not CHECKPOINT.is_file():
        print(f"needs COMFYUI_PATH and {CHECKPOINT} (tests/integration/setup_comfyui.sh)", file=sys.stderr)
        return 2
    sys.path.insert(0, comfy_path)
    torch.set_num_threads(args.threads)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.sd

    pack = importlib_pack()
    ft = pack.erasure.finetune
    from importlib import import_module

    node = import_module(f"{pack.__name__}.nodes.finetune")

    started = time.perf_counter()
    with torch.inference_mode():
        model, clip = comfy.sd.load_checkpoint_guess_config(str(CHECKPOINT), output_vae=False, output_clip=True)[:2]
    load_s = time.perf_counter() - started
    concepts = pack.erasure.concepts.ConceptSet.from_text("boat", care="water", contexts="a boat on water => water")
    settings = ft.FinetuneSettings(parameter_set=args.parameter_set, iterations=1, batch_size=1, latent_draws=1,
                                   checkpointing=args.checkpointing, learning_rate=1e-4)
    out: dict[str, object] = {}
    with torch.inference_mode(False), torch.enable_grad():
        den = node.ComfyDenoiser(model, clip, args.size, args.size, torch.device("cpu"))
        den.prewarm(ft.trainer.training_prompts(concepts))
        x = torch.randn(1, *den.latent_shape, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([500])
        with node.autograd_usable(den.root):
            cond = den.concat([den.encode(["boat"])])
            with torch.no_grad():
                den.eps(x, t, cond)  # warm-up
                s = time.perf_counter()
                den.eps(x, t, cond)
                out["eps_forward_s"] = round(time.perf_counter() - s, 2)
                both = den.concat([den.encode([""]), den.encode(["boat"])])
                s = time.perf_counter()
                den.eps(torch.cat([x, x]), t.repeat(2), both)
                out["pool_step_s"] = round(time.perf_counter() - s, 2)
            cpu = time.process_time()
            result = ft.finetune(den, concepts, settings, latents=x)
            out["iteration_cpu_s"] = round(time.process_time() - cpu, 1)  # all threads; contention-free measure
    out.update({
        "iteration_s": result.stats["s_per_iteration"], "checkpointed_modules": result.stats["checkpointed_modules"],
        "adapted_maps": result.stats["adapted_maps"], "trainable_params": result.stats["trainable_params"],
        "latent_shape": list(den.latent_shape), "parameter_set": args.parameter_set, "checkpointing": args.checkpointing,
        "batch_per_term": 1, "threads": args.threads, "load_s": round(load_s, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__, "machine": f"{platform.machine()} {os.cpu_count()} cpus (shared)",
        "gpu": "none in this session (device tool not lent)",
    })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_iteration.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = "\n".join(f"| {k} | {v} |" for k, v in out.items())
    (args.out / "finetune_iteration.md").write_text(
        "# One fine-tune iteration at SD1.5 shapes (CPU)\n\n| quantity | value |\n|---|---|\n" + rows + "\n"
    )
    print(json.dumps(out, indent=2))
    return 0


PACK_NAME = "care_erasure_pack"


def importlib_pack():  # noqa: ANN201
    """The repository imported as a package under its own name (as ComfyUI imports a custom-node folder),
    so ``nodes`` resolves ``..erasure``."""
    import importlib.util
    from importlib import import_module

    spec = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = pack
    spec.loader.exec_module(pack)
    import_module(f"{PACK_NAME}.erasure.finetune")
    import_module(f"{PACK_NAME}.erasure.concepts")
    return pack


if __name__ == "__main__":
    sys.exit(main())
