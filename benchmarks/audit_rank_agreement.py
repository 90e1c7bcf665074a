"""Do the cheap audit metrics rank concepts by damage the way the detector does?

    python benchmarks/audit_rank_agreement.py [--targets boat star ...] [--methods naive ...] [--seeds 8]
                                              [--steps 15] [--out benchmarks/results]

For each target and method (:data:`erasure.toyworld.evaluate.METHODS`) the committed toy model is erased
with the engine; then every concept the toy world's detector knows (12 objects + 6 backgrounds) is probed,
tagged target / CARE (the target's home background) / unrelated, and measured four ways:

* site drift      -- ``|dW r| / |W r|`` at the cross-attention keys/values (no denoiser call);
* denoiser drift  -- ``|eps_E - eps_O| / |eps_O - eps_O("")|`` at a few timesteps (no sampling);
* image change    -- 1 - SSIM of the paired images (pixels, for reference);
* CARE loss       -- detector-based: ``CARE_original - CARE_erased``, the drop of the share of the concept's
                     images (paired seeds) in which the detector finds it;
                     ``flip_loss``: the share of paired seeds whose image showed the concept before the erase
                     and not after (gains cannot cancel losses); ``prob_loss``: the drop of the detector's
                     mean probability for the concept (a soft score: fewer ties on few seeds).

Per erasure, Spearman rank correlations between each cheap metric and each damage measure are computed
over all probes and over the non-target probes only (collateral damage: the target's top rank is easy).
Pooled over every erasure's non-target probes, the summary also gives the ROC AUC of each cheap metric for
telling *damaged* concepts (CARE score down by at least :data:`DAMAGED_DROP`) from the rest. The JSON
reports every per-concept number, the per-erasure correlations and their means. Numbers are reported as
measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from erasure.audit import ImagePair, Probe, auc, run_audit, spearman  # noqa: E402
from erasure.audit.probes import CARE, TARGET, UNRELATED  # noqa: E402
from erasure.audit.toy import DetectorClassifier, ToyDenoiser, toy_prompt, toy_sites  # noqa: E402
from erasure.toyworld.config import SamplerConfig  # noqa: E402
from erasure.toyworld.detector import load_detector  # noqa: E402
from erasure.toyworld.evaluate import concept_set, erase_model, make_case  # noqa: E402
from erasure.toyworld.io import WEIGHTS_DIR, load_meta, load_model  # noqa: E402
from erasure.toyworld.sampler import sample  # noqa: E402

DEFAULT_METHODS = ("naive",)
SEED_BASE = 90_000  # disjoint from the other benchmarks' seeds
RESULTS = ROOT / "benchmarks" / "results"
CHEAP = ("site_drift", "denoiser_drift")
DETECTOR_DAMAGE = ("care_loss", "flip_loss", "prob_loss")
DAMAGED_DROP = 0.125
"""A concept counts as damaged when its CARE score drops by at least this (2 of 16 paired images)."""
PIXEL_DAMAGE = ("image_change",)  # 1 - SSIM of the paired images: damage seen in pixels, not by the detector


def probes_for(target: str, care: tuple[str, ...], labels: tuple[str, ...], world) -> list[Probe]:  # noqa: ANN001
    def tag(label: str) -> str:
        return TARGET if label == target else CARE if label in care else UNRELATED

    return [Probe(label, tag(label), toy_prompt(label, world)) for label in labels]


def mean_probability(detector, det, concept: str) -> float:  # noqa: ANN001
    """Detector's mean probability for ``concept`` in detections ``det`` (object sigmoid, or background softmax)."""
    world = detector.world
    if concept in world.objects:
        return float(det.object_probs[:, world.objects.index(concept)].mean())
    return float(det.background_probs[:, world.backgrounds.index(concept)].mean())


def detector_damage(detector, before, after, concept: str) -> dict[str, float]:  # noqa: ANN001
    """From the detections of the original (``before``) and edited (``after``) images of one concept:
    ``prob_loss``, the drop of the mean probability, and ``flip_loss``, the share of paired seeds whose
    original image shows the concept and whose edited image does not."""
    shown, kept = detector.present(before, concept), detector.present(after, concept)
    return {
        "prob_loss": mean_probability(detector, before, concept) - mean_probability(detector, after, concept),
        "flip_loss": float((shown & ~kept).mean()),
    }


def correlations(rows: list[dict]) -> dict:
    out = {}
    for scope, keep in (("all", lambda r: True), ("non_target", lambda r: r["tag"] != TARGET)):
        kept = [r for r in rows if keep(r)]
        for cheap in CHEAP:
            for ref in DETECTOR_DAMAGE + PIXEL_DAMAGE:
                out[f"{scope}:{cheap}~{ref}"] = spearman([r[cheap] for r in kept], [r[ref] for r in kept])
        out[f"{scope}:site_drift~denoiser_drift"] = spearman(
            [r["site_drift"] for r in kept], [r["denoiser_drift"] for r in kept]
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--targets", nargs="+", default=None, help="objects to erase (default: all 12)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--seeds", type=int, default=16, help="paired images per concept and model")
    p.add_argument("--drift-seeds", type=int, default=4, help="noise seeds for the denoiser drift")
    p.add_argument("--steps", type=int, default=15, help="DDIM steps for the paired images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--resummarise", type=Path, help="recompute the summary of an existing result JSON and exit")
    args = p.parse_args(argv)
    if args.resummarise is not None:
        return resummarise(args.resummarise)
    torch.set_num_threads(args.threads)
    started = time.time()
    model, world = load_model()
    args.targets = args.targets or list(world.objects)
    detector = load_detector()
    classifier = DetectorClassifier(detector)
    labels = tuple(world.labels)
    seeds = [SEED_BASE + i for i in range(args.seeds)]
    sampler = replace(SamplerConfig(), steps=args.steps)
    prompts = [toy_prompt(label, world) for label in labels]

    def images(m) -> dict[str, torch.Tensor]:  # noqa: ANN001
        flat = sample(m, [t for t in prompts for _ in seeds], seeds * len(prompts), sampler)
        return dict(zip(labels, flat.split(len(seeds))))

    original_images = images(model)
    original_detections = {label: detector.detect(imgs) for label, imgs in original_images.items()}
    print(f"original images: {len(labels)} concepts x {len(seeds)} seeds ({time.time() - started:.0f} s)", flush=True)
    cases = []
    for target in args.targets:
        case = make_case(target, world)
        probes = probes_for(target, case.care, labels, world)
        for method in args.methods:
            t0 = time.time()
            concepts, settings = concept_set(case, method, world)
            edited, result = erase_model(model, concepts, settings)
            edited_images = images(edited)
            pairs = {c: ImagePair(original_images[c], edited_images[c]) for c in labels}
            report = run_audit(
                probes,
                sites=toy_sites(model),
                updates=result.delta.updates,
                encoder=model.encoder(),
                original=ToyDenoiser(model),
                edited=ToyDenoiser(edited),
                seeds=list(range(args.drift_seeds)),
                images=pairs,
                classifier=classifier,
            )
            rows = []
            for r in report.rows:
                damage = detector_damage(
                    detector, original_detections[r.concept], detector.detect(edited_images[r.concept]), r.concept
                )
                rows.append(
                    {
                        "concept": r.concept,
                        "tag": r.tag,
                        "prompt": r.prompt,
                        "site_drift": r.site_drift,
                        "denoiser_drift": r.denoiser_drift,
                        "ssim": r.ssim,
                        "psnr": r.psnr,
                        "care_original": r.care_original,
                        "care_erased": r.care_edited,
                        "care_loss": r.care_loss,
                        **damage,
                        "image_change": 1.0 - r.ssim,
                    }
                )
            corr = correlations(rows)
            cases.append(
                {
                    "target": target,
                    "method": method,
                    "care": list(case.care),
                    "rows": rows,
                    "spearman": corr,
                    "seconds": round(time.time() - t0, 1),
                }
            )
            print(
                f"  {target:8s} {method:10s} rho(site, CARE loss)={_fmt(corr['all:site_drift~care_loss'])} "
                f"rho(denoiser, CARE loss)={_fmt(corr['all:denoiser_drift~care_loss'])} "
                f"non-target: {_fmt(corr['non_target:site_drift~prob_loss'])} / "
                f"{_fmt(corr['non_target:denoiser_drift~prob_loss'])} (soft) ({time.time() - t0:.0f} s)",
                flush=True,
            )
    meta = load_meta(WEIGHTS_DIR / "toy_model.safetensors")
    detector_stats = load_meta(WEIGHTS_DIR / "detector.safetensors").get("stats", {})
    out = {
        "benchmark": "audit_rank_agreement",
        "settings": {
            "targets": args.targets,
            "methods": args.methods,
            "seeds": seeds,
            "drift_seeds": args.drift_seeds,
            "sampler_steps": args.steps,
            "threads": args.threads,
        },
        "toy_model": meta.get("stats", {}),
        "detector": {k: v for k, v in detector_stats.items() if k == "train_seconds"}
        | {f"min_heldout_{m}": min(detector_stats[f"heldout_{m}"].values()) for m in ("accuracy", "recall")},
        **summarise(cases),
        "cases": cases,
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "audit_rank_agreement.json"
    path.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print("mean Spearman per erasure:")
    for k, v in out["mean_spearman_per_erasure"].items():
        print(f"  {k:40s} {_fmt(v)}")
    print(f"pooled non-target damage AUC: {json.dumps(out['pooled_non_target_damage_auc'])}")
    print(f"wrote {path} ({out['seconds']:.0f} s)")
    return 0


def summarise(cases: list[dict]) -> dict:
    """Mean per-erasure correlations, correlations over every erasure's non-target rows pooled, how well
    each cheap metric picks out the damaged non-target concepts (ROC AUC), and in how many erasures each
    measure ranks the target first."""
    keys = list(cases[0]["spearman"]) if cases else []
    pooled_rows = [r for c in cases for r in c["rows"] if r["tag"] != TARGET]
    pooled = correlations(pooled_rows) if pooled_rows else {}
    damaged = [r["care_loss"] >= DAMAGED_DROP - 1e-9 for r in pooled_rows]
    first = {}
    for m in (*CHEAP, *DETECTOR_DAMAGE, *PIXEL_DAMAGE):
        first[m] = sum(max(c["rows"], key=lambda r: r[m])["tag"] == TARGET for c in cases)
    return {
        "mean_spearman_per_erasure": {k: _mean([c["spearman"][k] for c in cases]) for k in keys},
        "pooled_non_target_spearman": {k: v for k, v in pooled.items() if k.startswith("all:")},
        "pooled_non_target_damage_auc": {m: auc([r[m] for r in pooled_rows], damaged) for m in (*CHEAP, *PIXEL_DAMAGE)}
        | {"damaged": int(sum(damaged)), "probes": len(pooled_rows), "damaged_drop": DAMAGED_DROP},
        "target_ranked_first": first | {"erasures": len(cases)},
    }


def resummarise(path: Path) -> int:
    """Recompute the summary fields of an existing result file from its per-concept rows (no sampling)."""
    data = json.loads(path.read_text())
    for case in data["cases"]:
        for r in case["rows"]:
            r.setdefault("image_change", 1.0 - r["ssim"])
        case["spearman"] = correlations(case["rows"])
    data.update(summarise(data["cases"]))
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(json.dumps(data["target_ranked_first"]))
    return 0


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


if __name__ == "__main__":
    sys.exit(main())
