"""``care-erasure audit``: the collateral-damage audit of an erasure on the embedded toy world.

Either erase now (``--erase boat --care water``) or audit a saved erasure (``--delta boat.safetensors``,
whose concept set is read from the file's metadata). Probes are the concept set's targets (``target``),
CARE concepts (``care``) and every other concept (``unrelated``): ``--probes FILE`` (prompt-list format of
:mod:`erasure.audit.probes`), ``--unrelated``, and by default every label the toy world's detector knows.

Writes ``report.json``, ``report.csv``, ``table.png``, ``bars.png`` and ``grid.png`` to ``--out`` and prints
the table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEFAULT_SEEDS = (0, 1, 2, 3)
DEFAULT_OUT = Path("audit_out")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="collateral-damage audit (site drift, denoiser drift, SSIM/PSNR, CARE score) on the toy world",
        description=__doc__.split("\n")[0],
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--delta", type=Path, help="a saved erasure (.safetensors LoRA or diff) made for the toy model")
    what.add_argument("--erase", help="erase these targets now (concept-set text format, comma separated)")
    parser.add_argument("--care", default="", help="CARE concepts to protect when erasing now (comma separated)")
    parser.add_argument("--retained", default="", help="general concepts to keep when erasing now")
    parser.add_argument("--strength", type=float, default=1.0, help="scale of the erasure (1 = as solved)")
    parser.add_argument("--probes", type=Path, help="prompt-list file: 'target: boat', 'care: water', 'a red car'")
    parser.add_argument("--unrelated", default="", help="extra unrelated concepts (comma separated)")
    parser.add_argument("--only-listed", action="store_true", help="do not add every toy-world label as a probe")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="seeds (images per probe)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps for the paired images")
    parser.add_argument("--weights", type=Path, help="toy model weights (default: the committed ones)")
    parser.add_argument("--detector", type=Path, help="toy detector weights (default: the committed ones)")
    parser.add_argument("--no-detector", action="store_true", help="skip CARE scores (no detector needed)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (created)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..audit import bar_plot, parse_probes, probes_from_concepts, table_image
    from ..audit.toy import toy_audit, toy_probes, toy_sites
    from ..concepts import ConceptSet
    from ..delta import load_delta
    from ..erase import erase
    from ..toyworld.io import load_model

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    model, world = load_model(args.weights)
    sites = toy_sites(model)
    if args.delta is not None:
        delta = load_delta(args.delta, [s.name for s in sites])
        if "concepts" not in delta.metadata:
            raise ValueError(f"'{args.delta}' carries no concept set in its metadata; give --probes instead")
        concepts = ConceptSet.from_json(delta.metadata["concepts"])
    else:
        concepts = ConceptSet.from_text(args.erase, retained=args.retained, care=args.care)
        delta = erase(sites, model.encoder(), concepts).delta
    unrelated = [c.strip() for c in args.unrelated.split(",") if c.strip()]
    probes = probes_from_concepts(concepts, unrelated)
    if args.probes is not None:
        probes = parse_probes(args.probes.read_text()) + probes
    probes = toy_probes(probes, world, every_label=not args.only_listed)
    detector = None
    if not args.no_detector:
        from ..toyworld.detector import load_detector

        detector = load_detector(args.detector)
    result = toy_audit(model, delta, probes, args.seeds, detector, args.steps, args.strength)
    result.report.stats["seconds"] = round(time.perf_counter() - started, 1)
    result.report.settings["concepts"] = concepts.summary()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(result.report.to_json() + "\n")
    (args.out / "report.csv").write_text(result.report.to_csv())
    table_image(result.report).save(args.out / "table.png")
    bar_plot(result.report).save(args.out / "bars.png")
    result.grid.save(args.out / "grid.png")
    print(result.report.as_table())
    for other in ("denoiser_drift", "care_loss"):
        rho = result.report.rank_agreement("site_drift", other)
        if rho is not None:
            print(f"Spearman(site drift, {other}) = {rho:.3f}")
    print(f"wrote report.json, report.csv, table.png, bars.png, grid.png to {args.out}")
    return 0
