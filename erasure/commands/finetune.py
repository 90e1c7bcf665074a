"""``care-erasure finetune``: ESD-style fine-tune erasure with CARE losses on the embedded toy world.

Trains LoRA adapters (see :mod:`erasure.finetune`) and saves them like the closed form's erasures:
a LoRA (``comfy``/``kohya`` keys) or a diff ``.safetensors``, written only once training has finished
(Ctrl-C leaves no file). ``--warm-start`` first solves the closed-form CARE-aware edit and trains from it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..finetune.adapters import PARAMETER_SETS

FORMATS = ("comfy", "kohya", "diff")
INTERRUPTED_EXIT = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..finetune import FinetuneSettings

    d = FinetuneSettings()
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune erasure (ESD) with CARE retain/context losses on the toy world; saves a LoRA",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--targets", required=True, help="concepts to erase ('boat' or 'boat -> sea', comma separated)")
    parser.add_argument("--care", default="", help="CARE concepts to retain (comma separated, 'water : 2' for a weight)")
    parser.add_argument("--retained", default="", help="general concepts to retain")
    parser.add_argument("--contexts", default="", help="context pairs, one per line or ';'-separated: 'a boat on water => water'")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--format", choices=FORMATS, default="comfy", help="LoRA key format, or a diff patch")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--parameter-set", choices=PARAMETER_SETS, default=d.parameter_set, help="which linear maps are trained")
    parser.add_argument("--rank", type=int, default=d.rank)
    parser.add_argument("--iterations", type=int, default=d.iterations)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (toy-world default 1e-3)")
    parser.add_argument("--eta", type=float, default=d.eta, help="ESD negative-guidance scale")
    parser.add_argument("--retain-scale", type=float, default=d.retain_scale, help="0 disables the CARE retain loss")
    parser.add_argument("--context-scale", type=float, default=d.context_scale, help="0 disables the contextual loss")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps of the partial-sampling pool")
    parser.add_argument("--pool-seeds", type=int, default=d.pool_seeds)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--warm-start", action="store_true", help="start from the closed-form CARE-aware edit")
    parser.add_argument("--weights", type=Path, help="toy model weights (default: the committed ones)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device (cuda when available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, progress: Callable[[int, int], None] | None = None) -> int:
    import torch

    from ..concepts import ConceptSet
    from ..erase import erase
    from ..finetune import FinetuneSettings, finetune
    from ..finetune.toy import ToyDenoiser
    from ..sites import discover_sites
    from ..toyworld.io import load_model

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    if args.out.suffix != ".safetensors":
        raise ValueError(f"'{args.out}': erasures are saved as .safetensors files")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"'{args.out}' already exists; choose another name or pass --overwrite")
    concepts = ConceptSet.from_text(
        args.targets, retained=args.retained, care=args.care, contexts=args.contexts.replace(";", "\n")
    )
    settings = FinetuneSettings(
        parameter_set=args.parameter_set, rank=args.rank, iterations=args.iterations, learning_rate=args.lr,
        eta=args.eta, retain_scale=args.retain_scale, context_scale=args.context_scale, batch_size=args.batch_size,
        sample_steps=args.sample_steps, pool_seeds=args.pool_seeds, seed=args.seed,
    )
    model, _ = load_model(args.weights)
    model = model.to(args.device)
    init = None
    if args.warm_start:
        init = erase(discover_sites(model.unet.state_dict()), model.encoder(), concepts).delta
    report = progress or _console_progress
    try:
        result = finetune(ToyDenoiser(model, args.device), concepts, settings, init=init, progress=report)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing was written", file=sys.stderr)
        return INTERRUPTED_EXIT
    if args.format == "diff":
        path = result.delta.save_diff(args.out, overwrite=args.overwrite)
    else:
        path = result.delta.save_lora(args.out, key_format=args.format, overwrite=args.overwrite)
    print(result.summary())
    print(f"saved {path} ({len(result.delta.updates)} maps) in {time.perf_counter() - started:.1f} s")
    return 0


def _console_progress(done: int, total: int) -> None:
    print(f"\r{done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)
