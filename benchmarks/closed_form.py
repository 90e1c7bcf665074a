"""Closed-form solve vs a straightforward per-layer implementation of the published formula.

For every model shape (SD1.5, SDXL, FLUX) and every size (targets x retained vectors), on the same random
weights and vectors, both methods produce the edited weights; we record the median wall time of each, the
peak extra resident memory of each, their ratio, and the max relative difference of the edited weights;
also each method's error against the same formula evaluated in float64 (the float32 baseline inverts
``lam I + G``, whose condition number reaches ``|c|^2 / lam`` with few vectors: its own rounding dominates).

* ours: one Cholesky per input width (:func:`erasure.solve.solve_input_space`), then per site ``W P`` -- the
  low-rank factors of ``W' - W``;
* baseline: per layer, ``mat1 = lam W + s_e sum W a c^T + s_p sum W r r^T`` and
  ``mat2 = lam I + s_e sum c c^T + s_p sum r r^T`` built with one outer product per concept vector, then
  ``W' = mat1 @ inverse(mat2)``.

The baseline is measured on every layer when its estimated time fits ``--baseline-budget`` seconds;
otherwise on as many layers as fit, and its time is scaled to all layers (``baseline_layers_measured`` says
how many; 0 means even one layer exceeds the budget and ``baseline_s`` is the estimate from timed
outer-product updates, with no difference measured). Run: ``python benchmarks/closed_form.py [--quick]``; writes ``benchmarks/results/closed_form.json``.
"""

from __future__ import annotations

import argparse
import json
import os
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
PROBE_VECTORS = 16
MMAP_THRESHOLD = str(128 * 1024)


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
    # addr_ is the in-place outer-product update: the baseline pays for arithmetic, not allocations.
    for ci, ai in zip(c, a):
        mat1.addr_(w @ ai, ci, alpha=ERASE_SCALE)
        mat2.addr_(ci, ci, alpha=ERASE_SCALE)
    for ri in r:
        mat1.addr_(w @ ri, ri, alpha=RETAIN_SCALE)
        mat2.addr_(ri, ri, alpha=RETAIN_SCALE)
    return mat1 @ torch.linalg.inv(mat2)


class Reference:
    """The same published form, vectorised and in float64: the yardstick both methods are measured against.

    ``mat2`` does not depend on the layer, so it is factorised once per case.
    """

    def __init__(self, c: torch.Tensor, a: torch.Tensor, r: torch.Tensor) -> None:
        self.c, self.a, self.r = (x.double() for x in (c, a, r))
        mat2 = LAM * torch.eye(c.shape[1], dtype=torch.float64) + ERASE_SCALE * self.c.T @ self.c
        self.cholesky = torch.linalg.cholesky(mat2 + RETAIN_SCALE * self.r.T @ self.r)

    def layer(self, w: torch.Tensor) -> torch.Tensor:
        w = w.double()
        mat1 = LAM * w + ERASE_SCALE * (w @ self.a.T) @ self.c + RETAIN_SCALE * (w @ self.r.T) @ self.r
        return torch.cholesky_solve(mat1.T, self.cholesky).T  # mat1 @ mat2^-1 (mat2 symmetric)


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.norm(x.double() - y.double()) / torch.linalg.norm(y.double()))


def probe_outer_products(w: torch.Tensor, n_vectors: int) -> float:
    """Seconds one baseline layer would take: time ``PROBE_VECTORS`` updates and scale to ``n_vectors``."""
    d = w.shape[1]
    mat1, mat2 = w.clone(), torch.eye(d)
    v = torch.randn(PROBE_VECTORS, d)
    start = time.perf_counter()
    for x in v:
        mat1.addr_(w @ x, x)
        mat2.addr_(x, x)
    per_vector = (time.perf_counter() - start) / PROBE_VECTORS
    start = time.perf_counter()
    torch.linalg.inv(mat2)
    return per_vector * n_vectors + (time.perf_counter() - start)


def run_case(model: str, n_targets: int, n_retained: int, budget: float, max_layer_s: float, seed: int) -> dict:
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

    # Estimate one baseline layer from a few outer-product updates, then measure as many layers as the
    # budget allows; a layer that alone would exceed the budget is not run and its time stays an estimate.
    layer_estimate = probe_outer_products(sites[0].weight, c.shape[0] + r.shape[0])
    n_layers = min(len(sites), int(budget / layer_estimate))
    if n_layers == 0 and layer_estimate <= max_layer_s:
        n_layers = 1  # one real layer still gives a measured time and a measured difference
    reference = Reference(c, a, r)
    base_s_layers, base_mem, max_rel, ours_err, base_err = [], 0, None, 0.0, None
    for i in range(len(sites) if n_layers == 0 else 0):  # no baseline layer fits: still check ours in float64
        up, down = factors[i]
        ours_err = max(ours_err, rel(sites[i].weight.double() + up.double() @ down.double(),
                                     reference.layer(sites[i].weight)))
    for i in range(n_layers):
        w = sites[i].weight
        new, s, mem = measured(lambda w=w: baseline_layer(w, c, a, r))
        base_s_layers.append(s)
        base_mem = max(base_mem, mem)
        up, down = factors[i]
        mine = w.double() + up.double() @ down.double()
        expected = reference.layer(w)
        max_rel = max(max_rel or 0.0, rel(mine, new))
        ours_err, base_err = max(ours_err, rel(mine, expected)), max(base_err or 0.0, rel(new, expected))
    baseline_s = (sum(base_s_layers) / n_layers if n_layers else layer_estimate) * len(sites)
    edited_bytes = sum(o * width * 4 for o in outs)
    return {
        "model": model, "width": width, "sites": len(sites), "targets": n_targets, "retained": n_retained,
        "ours_s": ours_s, "baseline_s": baseline_s, "speedup": baseline_s / ours_s,
        "baseline_layers_measured": n_layers,
        "ours_peak_extra_bytes": ours_mem, "baseline_peak_extra_bytes": base_mem,
        "edited_bytes": edited_bytes, "ours_extra_over_edited": ours_mem / edited_bytes,
        "max_rel_diff": max_rel, "ours_rel_err_vs_fp64": ours_err, "baseline_rel_err_vs_fp64": base_err,
        "rank": n_targets,
    }


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") != MMAP_THRESHOLD:
        # glibc raises its mmap threshold after large frees and then serves big tensors from an already
        # resident heap, hiding them from the peak-RSS measurement; a fixed threshold keeps every large
        # allocation mapped on use and unmapped on free, so VmHWM sees it.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD})
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="SD1.5 only, targets 100 x retained 1000 (the goal case)")
    parser.add_argument("--models", nargs="*", default=list(MODEL_SHAPES), choices=list(MODEL_SHAPES))
    parser.add_argument("--baseline-budget", type=float, default=20.0, help="seconds of baseline per case")
    parser.add_argument("--max-layer-seconds", type=float, default=240.0,
                        help="measure one baseline layer even past the budget when it is estimated below this")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the cases already in --out, run the rest")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure the selected cases again, keeping every other case already in --out")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cases = [("sd15", 100, 1000)] if args.quick else [
        (m, n, k) for m in args.models for n in TARGET_COUNTS for k in RETAINED_COUNTS
    ]
    keep_previous = (args.resume or args.remeasure) and args.out.exists()
    previous = json.loads(args.out.read_text()).get("cases", []) if keep_previous else []
    by_case = {(r["model"], r["targets"], r["retained"]): r for r in previous}
    done = {} if args.remeasure else by_case
    rows = [r for key, r in by_case.items() if key not in cases]  # other models' cases stay in the file
    rows += [done[case] for case in cases if case in done]
    for model, n, k in cases:
        if (model, n, k) in done:
            continue
        row = run_case(model, n, k, args.baseline_budget, args.max_layer_seconds, args.seed)
        rows.append(row)
        print(" ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                       for key, value in row.items()), flush=True)
        measured = {(r["model"], r["targets"], r["retained"]) for r in rows}
        full_grid = {(m, n, k) for m in MODEL_SHAPES for n in TARGET_COUNTS for k in RETAINED_COUNTS}
        write_results(args.out, rows, complete=full_grid <= measured)
    print(f"wrote {args.out}")


def write_results(out: Path, rows: list[dict], complete: bool) -> None:
    """Written after every case, so a long run that is stopped keeps what it measured (``--resume``)."""
    goal = next((r for r in rows if (r["model"], r["targets"], r["retained"]) == ("sd15", 100, 1000)), None)
    result = {
        "benchmark": "closed_form", "complete": complete, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(), "processor": platform.processor(),
        "load_average": os.getloadavg(), "repeats": REPEATS, "lambda": LAM, "cases": rows,
        "goal_sd15_100x1000": goal and {
            "speedup": goal["speedup"], "speedup_goal": 20.0, "max_rel_diff": goal["max_rel_diff"],
            "rel_diff_goal": 1e-4, "extra_memory_over_edited": goal["ours_extra_over_edited"], "memory_goal": 2.0,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
