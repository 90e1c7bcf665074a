"""``care-erasure scan`` and ``care-erasure suggest``: collateral-risk scan and CARE-set suggestion.

Both run on the embedded toy world (``--weights`` for other toy weights).

* ``scan``: rank a vocabulary by the drift an erasure causes at the edit sites, targets and near-synonyms
  listed apart; the erasure is made now (``--erase boat --care water``) or read from a file (``--delta``).
  ``--denoiser-top-k K`` re-ranks the top K by denoiser drift (the audit's measure).
* ``suggest``: a CARE set for ``--targets`` by ``--method text|risk|image|denoiser`` (``docs/neighbors.md``).

``--vocab``: ``toy`` (the toy world's concepts, default), ``all`` or shipped categories
(``objects,scenes``), or a file of your own (one concept per line). ``--json PATH`` writes the result.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_VOCAB = "toy"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", default=DEFAULT_VOCAB, help="toy | all | shipped categories (comma separated) | a file")
    parser.add_argument("--extra", default="", help="more concepts to add to the vocabulary (comma separated)")
    parser.add_argument("--template", default="{}", help="prompt template each concept is written into")
    parser.add_argument("--weights", type=Path, help="toy model weights (default: the committed ones)")
    parser.add_argument("--cache-dir", help="vocabulary cache folder (default: $CARE_ERASURE_CACHE or ~/.cache/care-erasure)")
    parser.add_argument("--no-cache", action="store_true", help="encode the vocabulary afresh, write no cache")
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")


def register(subparsers: argparse._SubParsersAction) -> None:
    scan = subparsers.add_parser("scan", help="rank concepts by predicted collateral damage of an erasure",
                                 description=__doc__.split("\n")[0])
    what = scan.add_mutually_exclusive_group(required=True)
    what.add_argument("--erase", help="erase these targets now (comma separated; 'boat -> sea' for an anchor)")
    what.add_argument("--delta", type=Path, help="a saved erasure (.safetensors) made for the toy model")
    scan.add_argument("--care", default="", help="CARE concepts protected by the erasure made now")
    scan.add_argument("--retained", default="", help="general concepts kept by the erasure made now")
    scan.add_argument("--top", type=int, default=20, help="rows to print")
    scan.add_argument("--denoiser-top-k", type=int, default=0, help="re-rank the top K by denoiser drift (0: off)")
    _common(scan)
    scan.set_defaults(func=run_scan)

    suggest = subparsers.add_parser("suggest", help="suggest a CARE set (concepts to protect) for targets",
                                    description=__doc__.split("\n")[0])
    suggest.add_argument("--targets", required=True, help="concepts to erase (comma separated)")
    suggest.add_argument("--method", default="image", choices=("text", "risk", "image", "denoiser"))
    suggest.add_argument("--top-k", type=int, default=5, help="at most this many suggestions")
    suggest.add_argument("--synonym-residual", type=float, help="near-synonym residual threshold (docs/neighbors.md)")
    suggest.add_argument("--related-z", type=float, help="robust z-score a concept needs to count as related")
    suggest.add_argument("--images", type=int, default=32, help="images per target (image method)")
    suggest.add_argument("--min-frequency", type=float, default=0.25, help="image method: fraction of images")
    suggest.add_argument("--min-lift", type=float, default=2.0,
                         help="image method: how much more often than in empty-prompt images (0: no baseline)")
    suggest.add_argument("--steps", type=int, default=20, help="DDIM steps (image method)")
    suggest.add_argument("--detector", type=Path, help="toy detector weights (default: the committed ones)")
    _common(suggest)
    suggest.set_defaults(func=run_suggest)


def _setup(args: argparse.Namespace):  # noqa: ANN202
    import torch

    from ..neighbors import NeighborSettings, resolve_vocabulary
    from ..neighbors.toy import toy_encoder, toy_vocabulary
    from ..sites import discover_sites
    from ..toyworld.io import load_model

    torch.set_num_threads(max(1, args.threads))
    model, world = load_model(args.weights)
    vocab = toy_vocabulary(world) if args.vocab == DEFAULT_VOCAB else resolve_vocabulary(args.vocab)
    extra = [c.strip() for c in args.extra.split(",") if c.strip()]
    if extra:
        vocab = vocab.with_concepts(extra)
    settings = dict(template=args.template, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    for name in ("synonym_residual", "related_z"):
        if getattr(args, name, None) is not None:
            settings[name] = getattr(args, name)
    if getattr(args, "top_k", None) is not None:
        settings["top_k"] = args.top_k
    sites = discover_sites(model.unet.state_dict())
    return model, world, toy_encoder(model), sites, vocab, NeighborSettings(**settings)


def _write_json(path: Path | None, text: str) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"wrote {path}")


def run_scan(args: argparse.Namespace) -> int:
    from ..concepts import ConceptSet
    from ..delta import load_delta
    from ..erase import erase
    from ..neighbors import risk_scan

    model, world, encoder, sites, vocab, settings = _setup(args)
    if args.delta is not None:
        delta = load_delta(args.delta, [s.name for s in sites])
        if "concepts" not in delta.metadata:
            raise ValueError(f"'{args.delta}' carries no concept set in its metadata; erase with --erase instead")
        concepts = ConceptSet.from_json(delta.metadata["concepts"])
    else:
        concepts = ConceptSet.from_text(args.erase, retained=args.retained, care=args.care)
        delta = erase(sites, encoder, concepts).delta
    drift_fn = None
    if args.denoiser_top_k > 0:
        drift_fn = _toy_denoiser_drift(model, delta, sites, world)
    report = risk_scan(sites, encoder, vocab, delta.updates, concepts, settings,
                       denoiser_drift=drift_fn, denoiser_top_k=args.denoiser_top_k)
    print(report.as_table(args.top))
    print("\nCARE list (top 5):", ", ".join(report.top(5)))
    _write_json(args.json, report.to_json())
    return 0


def _toy_denoiser_drift(model, delta, sites, world):  # noqa: ANN001, ANN202
    from ..audit.denoiser import denoiser_drift
    from ..audit.probes import Probe
    from ..audit.toy import ToyDenoiser, toy_prompt

    edited = model.with_unet_weights(delta.apply({s.name: s.weight for s in sites}))

    def drift(concepts):  # noqa: ANN001, ANN202
        probes = [Probe(c, "unrelated", toy_prompt(c, world)) for c in concepts]
        return denoiser_drift(ToyDenoiser(model), ToyDenoiser(edited), probes)

    return drift


def run_suggest(args: argparse.Namespace) -> int:
    from ..neighbors import suggest_care, suggest_from_images
    from ..neighbors.pipeline import prepare

    model, world, encoder, sites, vocab, settings = _setup(args)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.method == "image":
        from ..neighbors.toy import toy_detect, toy_generate
        from ..toyworld.detector import load_detector

        relation = prepare(encoder, vocab, targets, settings).relation
        flags = {c: "near-synonym" for c, f in zip(vocab.concepts, relation.near_synonym.tolist()) if f}
        suggestion = suggest_from_images(
            toy_generate(model, args.steps), toy_detect(load_detector(args.detector)), targets,
            templates=("a {}",), n_images=args.images, min_frequency=args.min_frequency, top_k=args.top_k,
            flags=flags, categories=dict(zip(vocab.concepts, vocab.categories)),
            baseline_prompt="" if args.min_lift > 0 else None, min_lift=args.min_lift,
        )
    elif args.method == "denoiser":
        from ..audit.toy import toy_prompt
        from ..neighbors import suggest_from_predictions
        from ..neighbors.toy import toy_predict

        def prompt(concept: str) -> str:
            return toy_prompt(concept, world) if concept in world.labels else concept

        suggestion = suggest_from_predictions(
            vocab.concepts, vocab.categories, toy_predict(model, [prompt(c) for c in vocab.concepts]), targets,
            toy_predict(model, [prompt(t) for t in targets]), settings.top_k, settings.related_z,
            settings.synonym_residual,
        )
    else:
        suggestion = suggest_care(args.method, sites, encoder, vocab, targets, settings)
    print(suggestion.as_table())
    print("\nCARE list:", ", ".join(suggestion.concepts) or "(none)")
    _write_json(args.json, suggestion.to_json())
    return 0
