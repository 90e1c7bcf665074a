"""CARE-set suggestion on the toy world, where the co-occurrence partners are known by construction.

For every toy-world object with a home background (boat -> water, star -> night, ...; the config's
``HOME_BACKGROUND``) the true CARE partner is that background. Three methods suggest a CARE set of at most
5 concepts from a vocabulary of the toy world's concepts (objects, backgrounds, colour words) plus
near-synonyms added on purpose (``"a boat"``, ``"the boat"`` for each target):

* ``text``  -- neighbours in the text encoder's space, residual clusters removed (:mod:`erasure.neighbors.suggest`);
* ``risk``  -- the concepts a naive erasure of the target damages most at the edit sites;
* ``image`` -- concepts the detector finds in >= 25% of generated target images and at least twice as
  often as in images of the empty prompt (same seeds);
* ``denoiser`` -- the text procedure on the denoiser's one-step clean-image estimates (no sampling).

Recorded per method: recall@5 and precision@5 (precision over the returned list, which may be shorter
than 5), per target and averaged; for the added near-synonyms, how many were flagged and how many were
(wrongly) suggested; for objects without a home background, how many concepts were suggested anyway.

Then the erasure check: each target is erased once with the hand-picked CARE set (its true partner, as in
:mod:`erasure.toyworld.evaluate`) and once with the suggested set of each ``--erase-methods`` method (no hand-picked
list), same settings. On fixed seeds the detector gives the target erasure rate (target prompt no longer
shows the target) and the CARE score (the partner is still detected in its own prompt and in the mixed
prompt "a boat on water"). The requirement is CARE(suggested) >= 90% of CARE(hand-picked) at the same
erasure rate.

Run: ``python benchmarks/care_suggest.py [--quick] [--skip-erasure]`` (needs the committed toy-world
weights); writes ``benchmarks/results/care_suggest.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure.concepts import DEFAULT_CARE_WEIGHT, ConceptSet, Retained, Target  # noqa: E402
from erasure.erase import EraseSettings  # noqa: E402
from erasure.neighbors import (  # noqa: E402
    FingerprintedEncoder,
    NeighborSettings,
    state_fingerprint,
    suggest_care,
    suggest_from_images,
    suggest_from_predictions,
)
from erasure.neighbors.pipeline import prepare  # noqa: E402
from erasure.neighbors.suggest import DEFAULT_TOP_K, Suggestion  # noqa: E402
from erasure.neighbors.toy import SYNONYM_TEMPLATES, toy_detect, toy_generate, toy_predict, toy_vocabulary  # noqa: E402
from erasure.sites import discover_sites  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "care_suggest.json"
K = DEFAULT_TOP_K
REQUIRED_CARE_RATIO = 0.9
IMAGE_TEMPLATE = "a {}"
METHODS = ("text", "risk", "image", "denoiser")  # the caption grammar's object phrase


def metrics(s: Suggestion, truth: set[str], synonyms: set[str]) -> dict[str, object]:
    top = s.concepts[:K]
    hits = len(truth & set(top))
    flagged = {f.concept for f in s.flagged}
    return {
        "suggested": top,
        "recall_at_5": hits / len(truth) if truth else None,
        "precision_at_5": (hits / len(top) if top else 0.0) if truth else None,
        "false_suggestions": len(top) - hits,
        "synonyms_flagged": sorted(synonyms & flagged),
        "synonyms_suggested": sorted(synonyms & set(s.concepts)),
        "flagged": [(f.concept, f.reason) for f in s.flagged],
    }


def average(rows: list[dict[str, object]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="generated images per target (image method)")
    p.add_argument("--seeds", type=int, default=16, help="seeds per prompt when scoring erasures")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--erase-methods", default="image,denoiser",
                   help="comma-separated methods whose suggested sets are erased and scored")
    p.add_argument("--skip-erasure", action="store_true", help="suggestion metrics only (no erasure scoring)")
    p.add_argument("--quick", action="store_true", help="8 images, 4 seeds, 8 steps (smoke run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.seeds, args.steps = 8, 4, 8
    torch.set_num_threads(args.threads)
    started = time.time()

    from erasure.audit.toy import toy_prompt
    from erasure.toyworld.config import SamplerConfig
    from erasure.toyworld.detector import load_detector
    from erasure.toyworld.evaluate import Prompt, Scorer, concept_set, erase_model, make_case
    from erasure.toyworld.io import MODEL_FILE, WEIGHTS_DIR, load_meta, load_model

    model, world = load_model()
    detector = load_detector()
    train_stats = load_meta(WEIGHTS_DIR / MODEL_FILE).get("stats", {})
    encoder = FingerprintedEncoder(model.encoder(), state_fingerprint(model.text.state_dict(), "|".join(model.tokenizer.vocab)))
    sites = discover_sites(model.unet.state_dict())
    vocab = toy_vocabulary(world, synonyms=True)
    settings = NeighborSettings(top_k=K, use_cache=False)
    sampler = SamplerConfig(steps=args.steps)
    generate, detect = toy_generate(model, args.steps), toy_detect(detector)
    t0 = time.perf_counter()
    # each concept as the captions name it ("a boat", "the sky"); colour words and synonyms as written
    predictions = toy_predict(model, [toy_prompt(c, world) if c in world.labels else c for c in vocab.concepts])
    prediction_s = time.perf_counter() - t0

    # baseline for the image method's lift test: the empty prompt on the same seeds, shared by every target
    t0 = time.perf_counter()
    baseline = detect(generate([""] * args.images, list(range(args.images))))
    baseline_s = time.perf_counter() - t0

    per_method: dict[str, list[dict[str, object]]] = {m: [] for m in METHODS}
    no_partner: dict[str, dict[str, int]] = {m: {} for m in per_method}
    suggestions: dict[str, dict[str, Suggestion]] = {m: {} for m in per_method}
    timing: dict[str, float] = {m: 0.0 for m in per_method}
    for target in world.objects:
        home = world.home_background.get(target)
        truth = {home[0]} if home else set()
        synonyms = {t.format(target) for t in SYNONYM_TEMPLATES}
        for method in ("text", "risk"):
            t0 = time.perf_counter()
            suggestions[method][target] = suggest_care(method, sites, encoder, vocab, [target], settings)
            timing[method] += time.perf_counter() - t0
        t0 = time.perf_counter()
        relation = prepare(encoder, vocab, [target], settings).relation
        flags = {c: "near-synonym" for c, f in zip(vocab.concepts, relation.near_synonym.tolist()) if f}
        suggestions["image"][target] = suggest_from_images(
            generate, detect, [target], templates=(IMAGE_TEMPLATE,), n_images=args.images, flags=flags,
            categories=dict(zip(vocab.concepts, vocab.categories)), top_k=K, baseline=baseline,
        )
        timing["image"] += time.perf_counter() - t0 + baseline_s / len(world.objects)
        t0 = time.perf_counter()
        i = vocab.concepts.index(target)
        suggestions["denoiser"][target] = suggest_from_predictions(
            vocab.concepts, vocab.categories, predictions, [target], predictions[i : i + 1], top_k=K)
        timing["denoiser"] += time.perf_counter() - t0 + prediction_s / len(world.objects)
        for method in per_method:
            row = {"target": target, "truth": sorted(truth), **metrics(suggestions[method][target], truth, synonyms)}
            if method == "image":
                row["frequencies"] = suggestions[method][target].stats["frequencies"]
                row["lifts"] = suggestions[method][target].stats["lifts"]
            if truth:
                per_method[method].append(row)
            else:
                no_partner[method][target] = len(row["suggested"])
        print(f"{target:8s} truth={sorted(truth)} " + " | ".join(f"{m}: {suggestions[m][target].concepts}" for m in per_method), flush=True)

    summary = {}
    for method, rows in per_method.items():
        n_syn = len(rows) * len(SYNONYM_TEMPLATES)
        summary[method] = {
            "recall_at_5": average(rows, "recall_at_5"),
            "precision_at_5": average(rows, "precision_at_5"),
            # the detector has no label for a phrase like "a boat": the image method never sees synonyms
            "synonyms_flagged": None if method == "image" else sum(len(r["synonyms_flagged"]) for r in rows) / n_syn,
            "synonyms_suggested": sum(len(r["synonyms_suggested"]) for r in rows),
            "suggestions_for_targets_without_partner": no_partner[method],
            "seconds": round(timing[method], 2),
        }

    erasure = None
    erase_methods = [m.strip() for m in args.erase_methods.split(",") if m.strip()]
    unknown = [m for m in erase_methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown --erase-methods {unknown}; choose from {METHODS}")
    if not args.skip_erasure:
        scorer = Scorer(model, detector, list(range(args.seeds)), sampler)
        erase_settings = EraseSettings()
        rows = []
        for target in world.home_background:
            case = make_case(target, world)
            prompts = [case.target_prompt, *case.care_prompts, *case.mixed_prompts]
            care_texts = [q.text for q in (*case.care_prompts, *case.mixed_prompts)]
            sets = {"original": None, "hand_picked": concept_set(case, "care", world)[0]}
            for m in erase_methods:  # the same suggested set is erased (and scored) once
                care = [Retained(c, DEFAULT_CARE_WEIGHT, care=True) for c in suggestions[m][target].concepts]
                sets[m] = ConceptSet([Target(target)], care)
            row = {"target": target, "truth": list(case.care),
                   "suggested": {m: suggestions[m][target].concepts for m in erase_methods}}
            for name, cs in sets.items():
                edited = model if cs is None else erase_model(model, cs, erase_settings)[0]
                scores = scorer.score_many(edited, [Prompt(q.text, q.concept) for q in prompts])
                row[name] = {
                    "erasure_rate": 1.0 - scores[case.target_prompt.text].rate,
                    "care_score": float(np.mean([scores[t].rate for t in care_texts])),
                }
            rows.append(row)
            print(f"erase {target:8s} " + " ".join(f"{k}={row[k]}" for k in sets), flush=True)
        mean_of = lambda key, field: float(np.mean([r[key][field] for r in rows]))  # noqa: E731
        hand_care = mean_of("hand_picked", "care_score")
        erasure = {
            "seeds": args.seeds,
            "rows": rows,
            "original": {"erasure_rate": mean_of("original", "erasure_rate"), "care_score": mean_of("original", "care_score")},
            "hand_picked": {"erasure_rate": mean_of("hand_picked", "erasure_rate"), "care_score": hand_care},
            "suggested": {},
            "required_care_ratio": REQUIRED_CARE_RATIO,
        }
        for m in erase_methods:
            care = mean_of(m, "care_score")
            erasure["suggested"][m] = {
                "erasure_rate": mean_of(m, "erasure_rate"), "care_score": care,
                "care_ratio": care / max(hand_care, 1e-9), "passes": care / max(hand_care, 1e-9) >= REQUIRED_CARE_RATIO,
            }

    result = {
        "benchmark": "care_suggest",
        "toy_model_stats": train_stats,
        "vocabulary": len(vocab),
        "k": K,
        "settings": {"images": args.images, "seeds": args.seeds, "steps": args.steps, "quick": args.quick},
        "summary": summary,
        "per_target": per_method,
        "erasure": erasure,
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"summary": summary, "erasure": {k: v for k, v in (erasure or {}).items() if k != "rows"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
