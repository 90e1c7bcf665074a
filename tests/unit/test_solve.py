"""The closed-form maths (erasure.solve): normal equations, the published UCE form, strict mode, scale."""

from __future__ import annotations

import pytest
import torch

from erasure.solve import InputSpaceProblem, SolveError, solve_input_space

D, OUT = 48, 40


def make(n: int = 3, m: int = 20, k: int = 0, seed: int = 0) -> tuple[torch.Tensor, InputSpaceProblem]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(OUT, D, generator=g, dtype=torch.float64)
    rand = lambda rows: torch.randn(rows, D, generator=g, dtype=torch.float64)  # noqa: E731
    problem = InputSpaceProblem.build(
        rand(n), rand(n), rand(m),
        erase_scale=torch.rand(n, generator=g, dtype=torch.float64) + 0.5,
        retained_weights=torch.rand(m, generator=g, dtype=torch.float64) + 0.5,
        context_inputs=rand(k), context_outputs=rand(k),
        context_weights=torch.rand(k, generator=g, dtype=torch.float64) + 0.5,
    )
    return w, problem


def edited(w: torch.Tensor, problem: InputSpaceProblem, lam: float, **kw) -> torch.Tensor:
    edit = solve_input_space(problem, lam, **kw)
    up, down = edit.factors(w, torch.float64)
    return w + up @ down


def outer_sum(scale: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return (left * scale[:, None]).T @ right


@pytest.mark.parametrize("k", [0, 5])
def test_solution_satisfies_normal_equations(k: int) -> None:
    w, p = make(k=k)
    lam = 0.3
    w_new = edited(w, p, lam)
    eye = torch.eye(D, dtype=torch.float64)
    # eq. (2): W' (lam I + G) = W (lam I + A)
    g = outer_sum(p.target_scales, p.targets, p.targets) + outer_sum(p.retained_weights, p.retained, p.retained)
    g += outer_sum(p.context_weights, p.context_inputs, p.context_inputs)
    a = outer_sum(p.target_scales, p.anchors, p.targets) + outer_sum(p.retained_weights, p.retained, p.retained)
    a += outer_sum(p.context_weights, p.context_outputs, p.context_inputs)
    lhs, rhs = w_new @ (lam * eye + g), w @ (lam * eye + a)
    assert torch.linalg.norm(lhs - rhs) / torch.linalg.norm(rhs) < 1e-10


def test_equals_published_uce_closed_form_with_one_outer_product_per_concept() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(OUT, D, generator=g, dtype=torch.float64)
    c, a, r = (torch.randn(n, D, generator=g, dtype=torch.float64) for n in (4, 4, 30))
    lam, s_e, s_p = 0.7, 1.3, 0.4
    mat1 = lam * w
    mat2 = lam * torch.eye(D, dtype=torch.float64)
    for ci, ai in zip(c, a):
        mat1 = mat1 + s_e * torch.outer(w @ ai, ci)
        mat2 = mat2 + s_e * torch.outer(ci, ci)
    for ri in r:
        mat1 = mat1 + s_p * torch.outer(w @ ri, ri)
        mat2 = mat2 + s_p * torch.outer(ri, ri)
    published = mat1 @ torch.linalg.inv(mat2)
    ours = edited(w, InputSpaceProblem.build(c, a, r, erase_scale=s_e, retained_weights=s_p), lam)
    assert torch.linalg.norm(ours - published) / torch.linalg.norm(published) < 1e-10


def test_targets_land_on_anchors_when_nothing_competes() -> None:
    w, p = make(n=4, m=0)
    w_new = edited(w, p, lam=1e-6)
    rel = torch.linalg.norm(p.targets @ w_new.T - p.anchors @ w.T) / torch.linalg.norm(p.anchors @ w.T)
    assert rel < 1e-5


def test_retained_weight_reduces_retained_drift() -> None:
    w, p = make(n=4, m=10)

    def drift(weight: float) -> float:
        q = InputSpaceProblem.build(p.targets, p.anchors, p.retained, retained_weights=weight)
        w_new = edited(w, q, lam=0.1)
        return float(torch.linalg.norm(p.retained @ (w_new - w).T))

    assert drift(10.0) < drift(1.0) < drift(0.0)


def test_strict_mode_keeps_retained_outputs_exactly_and_reports_protected_rank() -> None:
    w, p = make(n=3, m=12)
    edit = solve_input_space(p, 0.1, strict=True)
    up, down = edit.factors(w, torch.float64)
    w_new = w + up @ down
    before, after = p.retained @ w.T, p.retained @ w_new.T
    assert torch.linalg.norm(after - before) / torch.linalg.norm(before) < 1e-6
    assert edit.retained_rank == 12
    # Targets still move towards their anchors in the free directions.
    gap = lambda m: torch.linalg.norm(p.targets @ m.T - p.anchors @ w.T)  # noqa: E731
    assert gap(w_new) < gap(w)


def test_strict_mode_threshold_drops_noise_directions() -> None:
    w, p = make(n=2, m=4)
    noisy = torch.cat([p.retained, 1e-9 * torch.randn(3, D, dtype=torch.float64)])
    q = InputSpaceProblem.build(p.targets, p.anchors, noisy)
    assert solve_input_space(q, 0.1, strict=True, strict_threshold=1e-6).retained_rank == 4


def test_rank_is_number_of_target_and_context_vectors() -> None:
    w, p = make(n=3, m=30, k=2)
    edit = solve_input_space(p, 0.1)
    assert edit.rank == 5
    up, down = edit.factors(w, torch.float64)
    assert torch.linalg.matrix_rank(up @ down) == 5


def test_rank_beyond_width_is_stored_exactly_as_full_product() -> None:
    w, p = make(n=D + 10, m=5)
    edit = solve_input_space(p, 0.1)
    up, down = edit.factors(w, torch.float64)
    assert up.shape == (OUT, D) and torch.equal(down, torch.eye(D, dtype=torch.float64))
    reference = w @ edit.left @ edit.right.T
    assert torch.allclose(up @ down, reference, rtol=1e-12, atol=1e-12)


def test_many_concepts_solve() -> None:
    g = torch.Generator().manual_seed(3)
    d = 96
    c, a = torch.randn(300, d, generator=g), torch.randn(300, d, generator=g)
    r = torch.randn(5000, d, generator=g)
    edit = solve_input_space(InputSpaceProblem.build(c, a, r), 0.1)
    assert torch.isfinite(edit.right).all() and edit.rank == 300


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lam": 0.0}, "lambda"),
        ({"lam": float("nan")}, "lambda"),
    ],
)
def test_bad_lambda_is_refused(kwargs: dict, message: str) -> None:
    _, p = make()
    with pytest.raises(SolveError, match=message):
        solve_input_space(p, **kwargs)


def test_bad_vectors_are_refused() -> None:
    c = torch.randn(2, 8)
    with pytest.raises(SolveError, match="anchors"):
        InputSpaceProblem.build(c, torch.randn(3, 8))
    with pytest.raises(SolveError, match="NaN"):
        InputSpaceProblem.build(c, torch.full((2, 8), float("nan")))
    with pytest.raises(SolveError, match="weights"):
        InputSpaceProblem.build(c, c, c, retained_weights=-1.0)
    with pytest.raises(SolveError, match="at least one target"):
        InputSpaceProblem.build(torch.zeros(0, 8), torch.zeros(0, 8))


def test_in_place_spd_solve_matches_a_dense_solve_and_rejects_indefinite_systems() -> None:
    from erasure.solve import _solve_spd_in_place

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    system = torch.eye(64, dtype=torch.float64) + x.T @ x
    rhs = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    expected = torch.linalg.solve(system, rhs)
    assert torch.allclose(_solve_spd_in_place(system.clone(), rhs), expected, rtol=0, atol=1e-10)
    with pytest.raises(SolveError, match="not positive definite"):
        _solve_spd_in_place(-system, rhs)
