"""Toy-world erasure benchmark: does erasing a target spare its CARE partners?

    python benchmarks/toyworld_erasure.py [--seeds 32] [--targets boat star ...] [--out benchmarks/results]

For each target (objects with a home background, whose CARE partner is that background, and objects
without one as controls) and each method of :data:`erasure.toyworld.evaluate.METHODS`, the committed toy
model is edited with the engine and sampled over the same seeds as the original. The committed detector
scores:

* erasure          -- share of "a <target>" images without the target;
* erasure_in_ctx   -- share of "a <target> <on CARE>" images without the target;
* care_alone       -- CARE prompt alone ("water"): detection rate, and its ratio to the original model's;
* care_in_ctx      -- mixed prompt ("a boat on water"): is the CARE concept still there (ratio to original);
* care_score       -- mean of the two ratios;
* unrelated        -- detection rate of unrelated prompts, as a ratio to the original (sum / sum);
* fidelity         -- paired PSNR (dB) and mean absolute difference against the original, same seed.

Writes JSON, a markdown table and a PNG bar chart. Numbers are reported as measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erasure.toyworld.config import SamplerConfig  # noqa: E402
from erasure.toyworld.detector import load_detector  # noqa: E402
from erasure.toyworld.evaluate import (  # noqa: E402
    METHODS,
    METHODS_WITHOUT_CARE,
    Case,
    Scorer,
    concept_set,
    erase_model,
    make_case,
    mean,
)
from erasure.toyworld.io import load_model  # noqa: E402

DEFAULT_TARGETS = ("boat", "star", "snowman", "cactus", "car")
SEED_BASE = 50_000
RESULTS = ROOT / "benchmarks" / "results"
GOAL_ERASURE = 0.95
GOAL_CARE_SCORE = 0.90
PLOT_METRICS = ("erasure", "care_alone_score", "care_in_ctx_score", "unrelated_retention")
PLOT_COLOURS = ((200, 60, 60), (60, 120, 200), (40, 160, 200), (90, 170, 90))


def ratio(edited: float, original: float) -> float:
    return edited / original if original > 0 else float("nan")


def run_case(case: Case, scorer: Scorer, world, methods) -> dict:  # noqa: ANN001
    original = scorer.original
    prompts = [case.target_prompt, *case.care_prompts, *case.mixed_prompts, *case.unrelated]
    base = scorer.score_many(original, prompts)
    rows = {"original": _row(case, base, base, None)}
    for method in methods:
        concepts, settings = concept_set(case, method, world)
        start = time.time()
        edited, result = erase_model(original, concepts, settings)
        scores = scorer.score_many(edited, prompts)
        rows[method] = _row(case, scores, base, result)
        rows[method]["seconds"] = round(time.time() - start, 1)
        print(f"  {case.target:8s} {method:22s} erasure={rows[method]['erasure']:.2f} "
              f"care={rows[method]['care_score']:.2f} unrelated={rows[method]['unrelated_retention']:.2f} "
              f"({rows[method]['seconds']:.0f} s)", flush=True)
    return rows


def _row(case: Case, s: dict, base: dict, result) -> dict:  # noqa: ANN001
    tgt = case.target_prompt.text
    row: dict = {"erasure": 1.0 - s[tgt].rate}
    if case.care:
        alone = [p.text for p in case.care_prompts]
        mixed = [p.text for p in case.mixed_prompts]
        row["care_alone"] = mean([s[t].rate for t in alone])
        row["care_alone_score"] = mean([ratio(s[t].rate, base[t].rate) for t in alone])
        row["care_in_ctx"] = mean([s[t].rate for t in mixed])
        row["care_in_ctx_score"] = mean([ratio(s[t].rate, base[t].rate) for t in mixed])
        row["care_score"] = mean([row["care_alone_score"], row["care_in_ctx_score"]])
        # target detected inside the mixed prompt ("a boat on water" -> still a boat?)
        row["erasure_in_ctx"] = mean([1.0 - s[t].detected[case.target] for t in mixed])
        if s[alone[0]].psnr is not None:
            row["care_psnr"] = mean([s[t].psnr for t in alone + mixed])
            row["care_mad"] = mean([s[t].mad for t in alone + mixed])
    else:
        row["care_score"] = float("nan")
    unrel = [p.text for p in case.unrelated]
    row["unrelated_retention"] = ratio(sum(s[t].rate for t in unrel), sum(base[t].rate for t in unrel))
    if s[unrel[0]].psnr is not None:
        row["unrelated_psnr"] = mean([s[t].psnr for t in unrel])
        row["unrelated_mad"] = mean([s[t].mad for t in unrel])
    row["rates"] = {t: v.rate for t, v in s.items()}
    if result is not None:
        row["engine"] = {
            "residual": [t.residual for t in result.report.targets],
            "drift": {r.concept: r.drift for r in result.report.retained if r.care},
            "drift_generic_mean": mean([r.drift for r in result.report.retained if not r.care]),
            "rank": result.report.stats.get("rank"),
        }
    return row


def aggregate(results: dict, methods) -> dict:  # noqa: ANN001
    """Means over CARE targets (targets with a partner) and over control targets."""
    out = {}
    for group, keep in (("care_targets", True), ("control_targets", False)):
        cases = [r for r in results.values() if bool(r["care"]) == keep]
        if not cases:
            continue
        out[group] = {}
        for method in ["original", *methods]:
            rows = [c["methods"][method] for c in cases if method in c["methods"]]
            if not rows:
                continue
            keys = [k for k, v in rows[0].items() if isinstance(v, float)]
            out[group][method] = {k: mean([r[k] for r in rows if isinstance(r.get(k), float)]) for k in keys}
    return out


def markdown(results: dict, summary: dict, methods, meta: dict) -> str:  # noqa: ANN001
    cols = ("erasure", "erasure_in_ctx", "care_alone_score", "care_in_ctx_score", "care_score", "unrelated_retention", "care_psnr", "unrelated_psnr")
    lines = [
        "# Toy-world erasure benchmark",
        "",
        f"Seeds per prompt: {meta['seeds']}; sampler: DDIM {meta['sampler']['steps']} steps, CFG {meta['sampler']['guidance_scale']}. "
        "Scores are detector rates; *_score and retention are ratios to the original model; PSNR is paired (same seed) "
        "against the original model's image.",
        "",
        "## Mean over targets with a CARE partner",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for method, row in summary.get("care_targets", {}).items():
        lines.append(f"| {method} | " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    if "control_targets" in summary:
        lines += ["", "## Mean over control targets (no CARE partner)", "", "| method | erasure | unrelated_retention | unrelated_psnr |", "|---|---|---|---|"]
        for method, row in summary["control_targets"].items():
            lines.append(f"| {method} | {_fmt(row.get('erasure'))} | {_fmt(row.get('unrelated_retention'))} | {_fmt(row.get('unrelated_psnr'))} |")
    lines += ["", "## Per target", "", "| target | CARE | method | erasure | care_alone | care_in_ctx | care_score | unrelated | care_psnr |", "|---" * 9 + "|"]
    for target, res in results.items():
        for method, row in res["methods"].items():
            lines.append(
                f"| {target} | {', '.join(res['care']) or '-'} | {method} | {_fmt(row.get('erasure'))} | {_fmt(row.get('care_alone'))} | "
                f"{_fmt(row.get('care_in_ctx'))} | {_fmt(row.get('care_score'))} | {_fmt(row.get('unrelated_retention'))} | {_fmt(row.get('care_psnr'))} |"
            )
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:  # noqa: ANN001
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def plot(summary: dict, path: Path) -> None:
    """Grouped bars (PIL): per method, the four headline metrics averaged over CARE targets."""
    rows = summary.get("care_targets", {})
    methods = list(rows)
    font = ImageFont.load_default()
    bar_w, group_gap, height, top, bottom, left = 14, 24, 260, 30, 70, 40
    legend_step = 130
    width = max(left + len(methods) * (len(PLOT_METRICS) * bar_w + group_gap) + 20, left + len(PLOT_METRICS) * legend_step + 20)
    img = Image.new("RGB", (width, height + top + bottom + 20), (255, 255, 255))
    d = ImageDraw.Draw(img)
    d.text((left, 5), "Toy world, mean over CARE targets (1.0 = perfect)", fill=(0, 0, 0), font=font)
    for frac in (0.0, 0.5, 0.9, 1.0):
        y = top + height - frac * height
        d.line([(left - 4, y), (width - 10, y)], fill=(220, 220, 220) if frac not in (0.0,) else (0, 0, 0))
        d.text((2, y - 6), f"{frac:.1f}", fill=(0, 0, 0), font=font)
    for i, method in enumerate(methods):
        x0 = left + i * (len(PLOT_METRICS) * bar_w + group_gap)
        for j, metric in enumerate(PLOT_METRICS):
            v = rows[method].get(metric)
            if v is None or v != v:
                continue
            v = max(0.0, min(1.2, v))
            x = x0 + j * bar_w
            d.rectangle([x, top + height - v * height, x + bar_w - 2, top + height], fill=PLOT_COLOURS[j])
        for k, part in enumerate(method.split("+")):
            d.text((x0, top + height + 4 + 11 * k), part, fill=(0, 0, 0), font=font)
        psnr = rows[method].get("care_psnr")
        if psnr is not None and psnr == psnr:
            d.text((x0, top + height + 26), f"{psnr:.1f} dB", fill=(90, 90, 90), font=font)
    ly = top + height + 44
    for j, metric in enumerate(PLOT_METRICS):
        d.rectangle([left + j * legend_step, ly, left + j * legend_step + 10, ly + 10], fill=PLOT_COLOURS[j])
        d.text((left + j * legend_step + 14, ly), metric, fill=(0, 0, 0), font=font)
    d.text((left, ly + 14), "grey: paired PSNR of CARE images vs the original model (same seed)", fill=(90, 90, 90), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--unrelated", type=int, default=2, help="unrelated object prompts per target (plus one background)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS))
    p.add_argument("--steps", type=int, default=SamplerConfig.steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="combine toyworld_erasure.json files of runs over disjoint targets (parallel runs)")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, args.out)
        return
    torch.set_num_threads(args.threads)
    start = time.time()
    model, world = load_model()
    detector = load_detector()
    sampler = replace(SamplerConfig(), steps=args.steps)
    scorer = Scorer(model, detector, [SEED_BASE + i for i in range(args.seeds)], sampler)
    results = {}
    for target in args.targets:
        case = make_case(target, world, args.unrelated)
        methods = list(METHODS) if case.care else list(METHODS_WITHOUT_CARE)
        results[target] = {"care": list(case.care), "unrelated": [u.text for u in case.unrelated],
                           "methods": run_case(case, scorer, world, methods)}
    meta = {"seeds": args.seeds, "unrelated_objects": args.unrelated, "seed_base": SEED_BASE, "sampler": asdict(sampler), "targets": args.targets,
            "goals": {"erasure": GOAL_ERASURE, "care_score": GOAL_CARE_SCORE}, "seconds": round(time.time() - start, 1)}
    write(results, meta, args.out)
    print(f"done in {time.time() - start:.0f} s -> {args.out}")


def write(results: dict, meta: dict, out: Path) -> None:
    summary = aggregate(results, list(METHODS))
    out.mkdir(parents=True, exist_ok=True)
    (out / "toyworld_erasure.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=2) + "\n")
    (out / "toyworld_erasure.md").write_text(markdown(results, summary, list(METHODS), meta))
    plot(summary, out / "toyworld_erasure.png")
    print(markdown(results, summary, list(METHODS), meta))


def merge(paths: list[Path], out: Path) -> None:
    """Results of several runs (same settings, disjoint targets) -> one JSON / table / plot."""
    runs = [json.loads(p.read_text()) for p in paths]
    meta = dict(runs[0]["meta"])
    for r in runs[1:]:
        for key in ("seeds", "seed_base", "sampler", "unrelated_objects"):
            if r["meta"].get(key) != meta.get(key):
                raise ValueError(f"cannot merge runs with different {key}")
    results = {t: v for r in runs for t, v in r["results"].items()}
    meta["targets"] = list(results)
    meta["seconds"] = [r["meta"]["seconds"] for r in runs]
    meta["merged_from"] = [str(p) for p in paths]
    write(results, meta, out)


if __name__ == "__main__":
    main()
