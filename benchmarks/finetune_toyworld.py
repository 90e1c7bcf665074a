"""Toy-world fine-tune benchmark: ESD without retain vs with CARE retain vs with contextual CARE vs closed form.

    python benchmarks/finetune_toyworld.py [--targets boat star snowman] [--seeds 32] [--iterations 150]

Same cases, prompts, seeds and detector metrics as ``benchmarks/toyworld_erasure.py`` (erasure,
erasure_in_ctx, care_alone_score, care_in_ctx_score, care_score, unrelated_retention, paired PSNR), for:

* ``esd``               -- eq. (1) only (ESD-x: adapters on the cross-attention maps), no protection;
* ``esd+care``          -- plus the CARE retain loss, eq. (2), on the target's CARE partner;
* ``esd+care+context``  -- plus the contextual loss, eq. (3), on "a <target> <on CARE>" => CARE;
* ``closed_form_care``  -- the closed-form CARE-aware edit (the toy benchmark's ``care+context`` method);
* ``esd+care+context+warm`` (with ``--warm``) -- the fine-tune started from that closed-form edit.

Each fine-tune row also reports the engine's loss terms on a fixed evaluation batch (relative to the
untouched model) and the wall time per iteration. Writes JSON + markdown under ``benchmarks/results``.
Numbers are reported as measured, whatever they show.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.toyworld_erasure import SEED_BASE, _fmt, _row, aggregate  # noqa: E402
from erasure.concepts import DEFAULT_CARE_WEIGHT, ConceptSet, ContextPair, Retained, Target  # noqa: E402
from erasure.finetune import FinetuneSettings, finetune  # noqa: E402
from erasure.finetune.toy import ToyDenoiser  # noqa: E402
from erasure.finetune.trainer import evaluate_losses  # noqa: E402
from erasure.toyworld.config import SamplerConfig  # noqa: E402
from erasure.toyworld.detector import load_detector  # noqa: E402
from erasure.toyworld.evaluate import Case, Scorer, concept_set, erase_model, make_case  # noqa: E402
from erasure.toyworld.io import DETECTOR_FILE, MODEL_FILE, WEIGHTS_DIR, load_meta, load_model  # noqa: E402

DEFAULT_TARGETS = ("boat", "star", "snowman")
RESULTS = ROOT / "benchmarks" / "results"
CLOSED_FORM_METHOD = "care+context"  # the toy benchmark's closed-form CARE-aware configuration
# Fine-tune configurations: name -> (CARE retain on, context pairs on, warm start from closed form)
FT_METHODS: dict[str, tuple[bool, bool, bool]] = {
    "esd": (False, False, False),
    "esd+care": (True, False, False),
    "esd+care+context": (True, True, False),
}
WARM_METHOD = ("esd+care+context+warm", (True, True, True))
TOY_SETTINGS = FinetuneSettings(
    parameter_set="xattn", rank=4, iterations=150, learning_rate=1e-3, eta=1.0, batch_size=2,
    sample_steps=10, pool_seeds=4, guidance=SamplerConfig.guidance_scale, seed=0,
)  # fmt: skip
EVAL_DRAWS = 16


def ft_concepts(case: Case, care: bool, context: bool) -> ConceptSet:
    retained = [Retained(c, DEFAULT_CARE_WEIGHT, care=True) for c in case.care] if care else []
    pairs = [ContextPair(p.text, p.concept) for p in case.mixed_prompts] if context else []
    return ConceptSet([Target(case.target)], retained, pairs)


def unet_weights(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k[: -len(".weight")]: v for k, v in model.unet.state_dict().items() if k.endswith(".weight")}


def run_target(case: Case, scorer: Scorer, world, settings: FinetuneSettings, warm: bool) -> dict:  # noqa: ANN001
    original = scorer.original
    prompts = [case.target_prompt, *case.care_prompts, *case.mixed_prompts, *case.unrelated]
    base = scorer.score_many(original, prompts)
    rows: dict[str, dict] = {"original": _row(case, base, base, None)}
    den = ToyDenoiser(original)
    # every configuration's losses are measured with the full concept set (retain + context terms present)
    full = ft_concepts(case, True, True)
    start_losses = evaluate_losses(den, full, settings, None, draws=EVAL_DRAWS)

    def rel(delta) -> dict:  # noqa: ANN001
        """Erase and context terms as after/before ratios; retain (0 before, by definition) as its value."""
        end = evaluate_losses(den, full, settings, delta, draws=EVAL_DRAWS)
        return {k: end[k] if k == "retain" else round(end[k] / start_losses[k], 4) for k in end}

    concepts, cf_settings = concept_set(case, CLOSED_FORM_METHOD, world)
    t0 = time.time()
    cf_model, cf_result = erase_model(original, concepts, cf_settings)
    cf_seconds = time.time() - t0
    rows["closed_form_care"] = _row(case, scorer.score_many(cf_model, prompts), base, cf_result)
    rows["closed_form_care"] |= {"seconds": round(cf_seconds, 2), "loss_vs_original": rel(cf_result.delta)}
    _print(case, "closed_form_care", rows["closed_form_care"])

    methods = list(FT_METHODS.items()) + ([WARM_METHOD] if warm else [])
    for name, (care, context, warm_start) in methods:
        concepts = ft_concepts(case, care, context)
        t0 = time.time()
        result = finetune(den, concepts, settings, init=cf_result.delta if warm_start else None)
        edited = original.with_unet_weights(result.delta.apply(unet_weights(original)))
        row = _row(case, scorer.score_many(edited, prompts), base, None)
        row |= {
            "seconds": round(time.time() - t0, 1),
            "s_per_iteration": result.stats["s_per_iteration"],
            "pool_s": result.stats["pool_s"],
            "loss_vs_original": rel(result.delta),
            "loss_first_last": {k: [result.history[0][k], result.history[-1][k]] for k in result.history[0] if k != "iteration"},
        }
        rows[name] = row
        _print(case, name, row)
    return rows


def _print(case: Case, name: str, row: dict) -> None:
    print(f"  {case.target:8s} {name:24s} erasure={row['erasure']:.2f} care={row.get('care_score', float('nan')):.2f} "
          f"unrelated={row['unrelated_retention']:.2f} s/it={row.get('s_per_iteration', '-')}", flush=True)


def markdown(results: dict, summary: dict, meta: dict) -> str:
    cols = ("erasure", "erasure_in_ctx", "care_alone_score", "care_in_ctx_score", "care_score",
            "unrelated_retention", "care_psnr", "unrelated_psnr", "s_per_iteration")  # fmt: skip
    s = meta["settings"]
    lines = [
        "# Toy-world fine-tune erasure benchmark",
        "",
        f"Targets {', '.join(meta['targets'])}; {meta['seeds']} seeds per prompt; sampler DDIM {meta['sampler']['steps']} "
        f"steps, CFG {meta['sampler']['guidance_scale']}. Fine-tune: {s['parameter_set']} LoRA rank {s['rank']}, "
        f"{s['iterations']} iterations, Adam lr {s['learning_rate']}, eta {s['eta']}, batch {s['batch_size']}/term, "
        f"pool {s['pool_seeds']} seeds x {s['sample_steps']} DDIM steps. Detector rates; *_score and retention are "
        "ratios to the original model; PSNR is paired against the original model's image (same seed).",
        "",
        f"Toy model: {meta['model_stats']}. Total {meta['seconds']} s.",
        "",
        "## Mean over targets",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for method, row in summary.get("care_targets", {}).items():
        lines.append(f"| {method} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    lines += ["", "## Loss terms on a fixed evaluation batch (full concept set)", "",
              "erase and context: after / before (1 = unchanged); retain: its value after (0 before, by definition).", "",
              "| target | method | erase ratio | retain | context ratio |", "|---|---|---|---|---|"]
    for target, res in results.items():
        for method, row in res["methods"].items():
            lv = row.get("loss_vs_original")
            if lv:
                lines.append(f"| {target} | {method} | {_fmt(lv.get('erase'))} | {lv.get('retain', float('nan')):.2e} | {_fmt(lv.get('context'))} |")
    lines += ["", "## Per target", "", "| target | CARE | method | erasure | erasure_in_ctx | care_alone | care_in_ctx | care_score | unrelated | care_psnr |",
              "|---" * 10 + "|"]
    for target, res in results.items():
        for method, row in res["methods"].items():
            lines.append(
                f"| {target} | {', '.join(res['care']) or '-'} | {method} | {_fmt(row.get('erasure'))} | {_fmt(row.get('erasure_in_ctx'))} | "
                f"{_fmt(row.get('care_alone'))} | {_fmt(row.get('care_in_ctx'))} | {_fmt(row.get('care_score'))} | "
                f"{_fmt(row.get('unrelated_retention'))} | {_fmt(row.get('care_psnr'))} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    p.add_argument("--seeds", type=int, default=32)
    p.add_argument("--steps", type=int, default=SamplerConfig.steps, help="DDIM steps of the scored samples")
    p.add_argument("--iterations", type=int, default=TOY_SETTINGS.iterations)
    p.add_argument("--warm", action="store_true", help="also fine-tune from the closed-form edit")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    model, world = load_model()
    model_stats = load_meta(WEIGHTS_DIR / MODEL_FILE).get("stats", {})  # read with the weights, not at the end
    weights_sha = {f: hashlib.sha256((WEIGHTS_DIR / f).read_bytes()).hexdigest()[:16] for f in (MODEL_FILE, DETECTOR_FILE)}
    detector = load_detector()
    sampler = replace(SamplerConfig(), steps=args.steps)
    settings = replace(TOY_SETTINGS, iterations=args.iterations)
    scorer = Scorer(model, detector, [SEED_BASE + i for i in range(args.seeds)], sampler)
    results = {}
    for target in args.targets:
        case = make_case(target, world)
        if not case.care:
            raise SystemExit(f"'{target}' has no CARE partner in the toy world; choose a target with a home background")
        results[target] = {"care": list(case.care), "unrelated": [u.text for u in case.unrelated],
                           "methods": run_target(case, scorer, world, settings, args.warm)}
    methods = ["closed_form_care", *FT_METHODS] + ([WARM_METHOD[0]] if args.warm else [])
    summary = aggregate(results, methods)
    for method, row in summary.get("care_targets", {}).items():
        its = [r["methods"][method].get("s_per_iteration") for r in results.values() if method in r["methods"]]
        if its and its[0] is not None:
            row["s_per_iteration"] = sum(its) / len(its)
    meta = {"targets": args.targets, "seeds": args.seeds, "seed_base": SEED_BASE, "sampler": asdict(sampler),
            "settings": asdict(settings), "model_stats": model_stats, "weights_sha256_16": weights_sha,
            "threads": args.threads, "seconds": round(time.time() - start, 1)}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "finetune_toyworld.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2) + "\n")
    text = markdown(results, summary, meta)
    (args.out / "finetune_toyworld.md").write_text(text)
    print(text)
    print(f"done in {time.time() - start:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
