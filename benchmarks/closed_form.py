"""Closed-form solve vs a straightforward per-layer implementation of the published formula.

For every model shape (SD1.5, SDXL, FLUX) and every size (targets x retained vectors), on the same random
weights and vectors, both methods produce the edited weights; we record the median wall time of each, the
peak extra resident memory of each, their ratio, and the max relative difference of the edited weights.

* ours: one Cholesky per input width (:func:`erasure.solve.solve_input_space`), then per site ``W P`` -- the
  low-rank factors of ``W' - W``;
* baseline: per layer, ``mat1 = lam W + s_e sum W a c^T + s_p sum W r r^T`` and
  ``mat2 = lam I + s_e sum c c^T + s_p sum r r^T`` built with one outer product per concept vector, then
  ``W' = mat1 @ inverse(mat2)``.

The baseline is measured on every layer when its estimated time fits ``--baseline-budget`` seconds;
otherwise on as many layers as fit, and its time is scaled to all layers (``baseline_layers_measured`` says
how many). Run: ``python benchmarks/closed_form.py [--quick]``; writes ``benchmarks/results/closed_form.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.shapes import MODEL_SHAPES, random_model_sites  # noqa: E402
from erasure.solve import InputSpaceProblem, solve_input_space  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "closed_form.json"
TARGET_COUNTS = (1, 10, 100)
RETAINED_COUNTS = (0, 100, 1000, 10000)
LAM, ERASE_SCALE, RETAIN_SCALE = 0.1, 1.0, 1.0
REPEATS = 3


def rss_bytes(field: str) -> int:
    """Resident-set figures of this process from /proc (``VmRSS`` now, ``VmHWM`` peak since reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    # Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0).
    Path("/proc/self/clear_refs").write_text("5")


def measured(fn):
    """Run ``fn`` once; return (result, seconds, peak extra resident bytes)."""
    reset_peak()
    before = rss_bytes("VmRSS")
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    return out, seconds, max(0, rss_bytes("VmHWM") - before)


def ours(sites, problem):
    edit = solve_input_space(problem, LAM)
    return [edit.factors(s.weight) for s in sites]


def baseline_layer(w: torch.Tensor, c: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """The published ridge form for one layer, one outer product per concept vector."""
    d = w.shape[1]
    mat1 = LAM * w.clone()
    mat2 = LAM * torch.eye(d, dtype=w.dtype)
    for ci, ai in zip(c, a):
        mat1 += ERASE_SCALE * torch.outer(w @ ai, ci)
        mat2 += ERASE_SCALE * torch.outer(ci, ci)
    for ri in r:
        mat1 += RETAIN_SCALE * torch.outer(w @ ri, ri)
        mat2 += RETAIN_SCALE * torch.outer(ri, ri)
    return mat1 @ torch.linalg.inv(mat2)


def run_case(model: str, n_targets: int, n_retained: int, budget: float, seed: int) -> dict:
    width, outs = MODEL_SHAPES[model]
    sites = random_model_sites(model, seed)
    g = torch.Generator().manual_seed(seed + 1)
    # Token vectors of a CLIP-like encoder have norms ~ sqrt(d); unit-variance entries give that.
    c, a, r = (torch.randn(n, width, generator=g) for n in (n_targets, n_targets, n_retained))
    problem = InputSpaceProblem.build(c, a, r, erase_scale=ERASE_SCALE, retained_weights=RETAIN_SCALE)

    ours_runs = [measured(lambda: ours(sites, problem)) for _ in range(REPEATS)]
    factors = ours_runs[0][0]
    ours_s = statistics.median(t for _, t, _ in ours_runs)
    ours_mem = max(m for _, _, m in ours_runs)

    # Estimate the baseline from its first layer, then measure as many layers as the budget allows.
    first, first_s, _ = measured(lambda: baseline_layer(sites[0].weight, c, a, r))
    n_layers = len(sites) if first_s * len(sites) <= budget else max(1, int(budget / max(first_s, 1e-9)))
    base_s_layers, base_mem, max_rel = [], 0, 0.0
    for i in range(n_layers):
        w = sites[i].weight
        (new, s, mem) = (first, first_s, 0) if i == 0 else measured(lambda w=w: baseline_layer(w, c, a, r))
        base_s_layers.append(s)
        base_mem = max(base_mem, mem)
        up, down = factors[i]
        mine = w.double() + up @ down
        max_rel = max(max_rel, float(torch.linalg.norm(mine - new.double()) / torch.linalg.norm(new.double())))
    baseline_s = sum(base_s_layers) * len(sites) / n_layers
    edited_bytes = sum(o * width * 4 for o in outs)
    return {
        "model": model, "width": width, "sites": len(sites), "targets": n_targets, "retained": n_retained,
        "ours_s": ours_s, "baseline_s": baseline_s, "speedup": baseline_s / ours_s,
        "baseline_layers_measured": n_layers,
        "ours_peak_extra_bytes": ours_mem, "baseline_peak_extra_bytes": base_mem,
        "edited_bytes": edited_bytes, "ours_extra_over_edited": ours_mem / edited_bytes,
        "max_rel_diff": max_rel, "rank": n_targets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SD1.5 only, targets 100 x retained 1000 (the goal case)")
    parser.add_argument("--models", nargs="*", default=list(MODEL_SHAPES), choices=list(MODEL_SHAPES))
    parser.add_argument("--baseline-budget", type=float, default=20.0, help="seconds of baseline per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cases = [("sd15", 100, 1000)] if args.quick else [
        (m, n, k) for m in args.models for n in TARGET_COUNTS for k in RETAINED_COUNTS
    ]
    rows = []
    for model, n, k in cases:
        row = run_case(model, n, k, args.baseline_budget, args.seed)
        rows.append(row)
        print(f"{model:5s} targets={n:4d} retained={k:6d}  ours {row['ours_s']:.4f}s  baseline {row['baseline_s']:.3f}s"
              f" ({row['baseline_layers_measured']}/{row['sites']} layers)  x{row['speedup']:.1f}"
              f"  rel.diff {row['max_rel_diff']:.2e}  extra mem {row['ours_extra_over_edited']:.2f}x edited", flush=True)
    goal = next((r for r in rows if (r["model"], r["targets"], r["retained"]) == ("sd15", 100, 1000)), None)
    result = {
        "benchmark": "closed_form", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "processor": platform.processor(), "repeats": REPEATS,
        "lambda": LAM, "cases": rows,
        "goal_sd15_100x1000": goal and {
            "speedup": goal["speedup"], "speedup_goal": 20.0, "max_rel_diff": goal["max_rel_diff"],
            "rel_diff_goal": 1e-4, "extra_memory_over_edited": goal["ours_extra_over_edited"], "memory_goal": 2.0,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
