"""The main job on the toy world: erase one target naively and CARE-aware, audit both, draw the grid.

    python -m erasure.toyworld.demo --out out/demo [--target boat] [--seeds 8]

Prints the engine's report for the CARE-aware erase and a detector audit (share of images showing each
prompt's concept, original / naive / CARE-aware), and writes to ``--out``:

* ``demo_grid.png``   -- rows: target, CARE and unrelated prompts; columns: original / naive / CARE-aware;
* ``demo_audit.json`` -- the audit numbers, the engine reports and the settings;
* ``erase_<target>_care.safetensors`` -- the CARE-aware edit as a ComfyUI-format LoRA.

A CLI command can wrap it with :func:`add_arguments` and :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ..grid import GridRow, model_seed_grid
from .config import SamplerConfig
from .detector import load_detector
from .evaluate import Prompt, Scorer, concept_set, erase_model, make_case
from .io import load_model

DEFAULT_TARGET = "boat"
NAIVE_METHOD = "naive"
CARE_METHOD = "care+context"
DEMO_SEED_BASE = 70_000
GRID_SAMPLES = 4
GRID_UNRELATED = 2
GRID_CELL = 88  # px per 32 px sample: wide enough for a "seed 70000" column label
COLUMNS = ("original", "naive erase", "CARE-aware erase")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder (created)")
    p.add_argument("--target", default=DEFAULT_TARGET, help="object to erase (default: boat)")
    p.add_argument("--seeds", type=int, default=8, help="samples per prompt for the audit")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared machine)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    start = time.time()
    model, world = load_model()
    detector = load_detector()
    if args.target not in world.objects:
        raise ValueError(f"unknown target {args.target!r}; the toy world has: {', '.join(world.objects)}")
    case = make_case(args.target, world)
    prompts: list[Prompt] = [case.target_prompt, *case.care_prompts, *case.mixed_prompts, *case.unrelated[:GRID_UNRELATED]]
    kinds = ["target"] + ["CARE"] * len(case.care_prompts) + ["CARE in context"] * len(case.mixed_prompts) + ["unrelated"] * GRID_UNRELATED
    tags = ["target"] + ["care"] * (len(case.care_prompts) + len(case.mixed_prompts)) + ["unrelated"] * GRID_UNRELATED
    sampler = SamplerConfig()
    scorer = Scorer(model, detector, [DEMO_SEED_BASE + i for i in range(args.seeds)], sampler)
    models = {"original": model}
    reports = {}
    for label, method in (("naive erase", NAIVE_METHOD), ("CARE-aware erase", CARE_METHOD)):
        concepts, settings = concept_set(case, method, world)
        models[label], result = erase_model(model, concepts, settings)
        reports[label] = {"method": method, "concepts": json.loads(concepts.to_json()), "report": result.report.to_dict()}
        if label == "CARE-aware erase":
            args.out.mkdir(parents=True, exist_ok=True)
            lora = result.delta.save_lora(args.out / f"erase_{case.target}_care.safetensors", overwrite=True)
            print(f"CARE-aware erase of '{case.target}' (CARE: {', '.join(case.care) or 'none'}), engine report:")
            print(result.report.as_table())
            print()
    audit, shown = {}, {}
    for label, m in zip(COLUMNS, models.values()):
        audit[label] = scorer.score_many(m, prompts)
        shown[label] = {t: imgs[:GRID_SAMPLES] for t, imgs in scorer.last_images.items()}
    header = f"{'prompt':<26} {'kind':<16} {'concept':<8} " + " ".join(f"{c:>17}" for c in COLUMNS)
    print(f"detector audit: share of {args.seeds} samples showing the concept")
    print(header)
    for p, kind in zip(prompts, kinds):
        print(f"{p.text:<26} {kind:<16} {p.concept:<8} " + " ".join(f"{audit[c][p.text].rate:17.2f}" for c in COLUMNS))
    images = [[shown[label][p.text] for p in prompts] for label in COLUMNS]
    rows = [GridRow(f'"{p.text}" ({kind}: {p.concept})', tag) for p, kind, tag in zip(prompts, kinds, tags)]
    seeds = scorer.seeds[:GRID_SAMPLES]
    title = f"erase '{case.target}' (CARE: {', '.join(case.care) or 'none'})"
    grid = args.out / "demo_grid.png"
    model_seed_grid(images, rows, list(COLUMNS), seeds, title, cell=GRID_CELL).save(grid)
    out = {
        "target": case.target,
        "care": list(case.care),
        "seeds": args.seeds,
        "sampler": asdict(sampler),
        "audit": {c: {t: asdict(s) for t, s in audit[c].items()} for c in COLUMNS},
        "reports": reports,
        "seconds": round(time.time() - start, 1),
    }
    (args.out / "demo_audit.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {grid}, {args.out / 'demo_audit.json'}, {lora} in {time.time() - start:.0f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Erase a concept from the toy world, naive vs CARE-aware.")
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
