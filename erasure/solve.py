r"""Closed-form, CARE-aware edit of the linear maps that read token vectors.

For one input space of width ``d`` and every site ``W`` (``out x d``) reading it, the edit minimises

.. math::

    \sum_i s_i \lVert W' c_i - W a_i \rVert^2
  + \sum_j w_j \lVert W' r_j - W r_j \rVert^2
  + \sum_k u_k \lVert W' r'_k - W r_k \rVert^2
  + \lambda \lVert W' - W \rVert_F^2                                             \tag{1}

with targets ``c_i`` sent to anchors ``a_i`` (scale ``s_i``), retained vectors ``r_j`` kept (weight
``w_j``) and contextual CARE pairs ``r'_k -> r_k`` (a retained concept seen inside a target context
read as the concept alone, weight ``u_k``). Setting the gradient to zero gives the normal equations

.. math::

    W' (\lambda I + G) = W (\lambda I + A),\quad
    G = \sum s_i c_i c_i^T + \sum w_j r_j r_j^T + \sum u_k r'_k r'^T_k,\quad
    A = \sum s_i a_i c_i^T + \sum w_j r_j r_j^T + \sum u_k r_k r'^T_k.           \tag{2}

The retained terms cancel in ``A - G``, so

.. math::

    W' - W = W (A - G)(\lambda I + G)^{-1} = (W P)\,V^T,\qquad
    P = [\,s_i (a_i - c_i)\,|\,u_k (r_k - r'_k)\,],\quad
    V = (\lambda I + G)^{-1} [\,c_i\,|\,r'_k\,],                                   \tag{3}

an exact rank-``(n + k)`` update. ``G`` does not depend on ``W``: one Cholesky factorisation per input
width serves every site of that width, and each site only costs the product ``W P``. Without contextual
pairs and with equal scales, (3) equals the published UCE ridge form
``(lambda W + s_e sum W a c^T + s_p sum W r r^T)(lambda I + s_e sum c c^T + s_p sum r r^T)^-1``.

**Strict mode** keeps the retained span exactly: with ``B`` an orthonormal basis of the span of the
retained vectors (eigenvectors of ``sum w_j r_j r_j^T`` whose eigenvalue exceeds
``threshold * largest``; smaller ones are numerically noise) and ``N`` a basis of its complement, the
update is restricted to ``Delta = X N^T`` (so ``Delta r = 0`` for every ``r`` in the span). Minimising
(1) under that constraint gives

.. math::

    W' - W = (W P)\,V_N^T,\qquad V_N = N (\lambda I + N^T G N)^{-1} N^T [\,c_i\,|\,r'_k\,].   \tag{4}

The price is an erase residual wherever a target direction lies in the retained span; it is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ACCUMULATE_DTYPE = torch.float64
"""Gram matrices sum up to ~10^4 outer products of vectors with norms ~30: accumulate in float64."""
FACTOR_DTYPE = torch.float32
"""Precision of the per-site products ``W P`` (see :meth:`InputSpaceEdit.factors`)."""
GRAM_CHUNK_BYTES = 32 * 2**20
"""Size of the float64 copy of stacked vectors per Gram update (2048 rows of 2048, 1024 of 4096): with
10^4 retained vectors the copy, not the ``d x d`` system, would otherwise set the peak memory."""
DEFAULT_STRICT_THRESHOLD = 1e-6
"""Relative eigenvalue below which a retained direction counts as numerical noise (strict mode)."""


class SolveError(ValueError):
    """The system cannot be solved as posed (the message says what to change)."""


@dataclass(frozen=True)
class InputSpaceProblem:
    """All vectors of one input width ``d`` (rows are vectors; weights are per row)."""

    targets: torch.Tensor  # [n, d] c_i
    anchors: torch.Tensor  # [n, d] a_i
    target_scales: torch.Tensor  # [n] s_i
    retained: torch.Tensor  # [m, d] r_j
    retained_weights: torch.Tensor  # [m] w_j
    context_inputs: torch.Tensor  # [k, d] r'_k
    context_outputs: torch.Tensor  # [k, d] r_k
    context_weights: torch.Tensor  # [k] u_k

    @property
    def width(self) -> int:
        return int(self.targets.shape[1])

    @classmethod
    def build(
        cls,
        targets: torch.Tensor,
        anchors: torch.Tensor,
        retained: torch.Tensor | None = None,
        *,
        erase_scale: float | torch.Tensor = 1.0,
        retained_weights: float | torch.Tensor = 1.0,
        context_inputs: torch.Tensor | None = None,
        context_outputs: torch.Tensor | None = None,
        context_weights: float | torch.Tensor = 1.0,
    ) -> InputSpaceProblem:
        """Validate shapes and broadcast scalar weights; missing groups become empty ``[0, d]``."""
        if targets.ndim != 2 or targets.shape[0] == 0:
            raise SolveError("need at least one target vector as a [n, d] tensor")
        d = targets.shape[1]
        empty = targets.new_zeros((0, d))
        retained = empty if retained is None else retained
        context_inputs = empty if context_inputs is None else context_inputs
        context_outputs = empty if context_outputs is None else context_outputs
        for name, t in (("anchors", anchors), ("retained", retained),
                        ("context_inputs", context_inputs), ("context_outputs", context_outputs)):
            if t.ndim != 2 or t.shape[1] != d:
                raise SolveError(f"{name} must be [*, {d}] to match the targets, got {tuple(t.shape)}")
        if anchors.shape[0] != targets.shape[0]:
            raise SolveError(f"{targets.shape[0]} targets but {anchors.shape[0]} anchors; pair each target")
        if context_inputs.shape[0] != context_outputs.shape[0]:
            raise SolveError("context inputs and outputs must be paired row by row")

        def weights(w: float | torch.Tensor, n: int, what: str) -> torch.Tensor:
            w = torch.as_tensor(w, dtype=ACCUMULATE_DTYPE).flatten()
            w = w.expand(n).clone() if w.numel() == 1 else w
            if w.numel() != n:
                raise SolveError(f"{what}: {w.numel()} weights for {n} vectors")
            if not torch.isfinite(w).all() or (w < 0).any():
                raise SolveError(f"{what} weights must be finite and >= 0")
            return w

        problem = cls(
            targets, anchors, weights(erase_scale, targets.shape[0], "erase scale"),
            retained, weights(retained_weights, retained.shape[0], "retained"),
            context_inputs, context_outputs, weights(context_weights, context_inputs.shape[0], "context"),
        )
        for name in ("targets", "anchors", "retained", "context_inputs", "context_outputs"):
            if not torch.isfinite(getattr(problem, name)).all():
                raise SolveError(f"{name} vectors contain NaN or infinity; check the text encoder output")
        return problem


@dataclass(frozen=True)
class InputSpaceEdit:
    """The solved edit of one input space: every site ``W`` becomes ``W + (W P) V^T`` (eq. 3/4)."""

    left: torch.Tensor  # P [d, r] float64
    right: torch.Tensor  # V [d, r] float64
    strict: bool
    retained_rank: int  # dimension of the protected span (strict mode), else 0

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    def factors(self, weight: torch.Tensor, dtype: torch.dtype = FACTOR_DTYPE) -> tuple[torch.Tensor, torch.Tensor]:
        """LoRA factors ``(up, down)`` with ``up @ down = W P V^T`` for this site's ``W``.

        The system was solved in float64; the per-site product runs in ``dtype`` (float32 by default: one
        rounding of a well-conditioned product, ~1e-7 relative, and the factors are stored in float32).
        When the rank reaches ``d`` the product is stored with ``down = I`` (still exact, rank ``d``).
        """
        w = weight.to(device=self.left.device, dtype=dtype)
        d = self.left.shape[0]
        if self.rank >= d:
            eye = torch.eye(d, dtype=dtype, device=self.left.device)
            return w @ (self.left @ self.right.T).to(dtype), eye
        return w @ self.left.to(dtype), self.right.T.to(dtype)


def _gram(rows: torch.Tensor, weights: torch.Tensor, out: torch.Tensor) -> None:
    """``out += sum_i weights_i rows_i rows_i^T = X^T X`` with ``X_i = sqrt(weights_i) rows_i``, in float64
    chunks of at most :data:`GRAM_CHUNK_BYTES` (weights are >= 0, checked by the problem)."""
    step = max(1, GRAM_CHUNK_BYTES // (rows.shape[1] * torch.finfo(ACCUMULATE_DTYPE).bits // 8))
    for start in range(0, rows.shape[0], step):
        chunk = rows[start : start + step].to(device=out.device, dtype=ACCUMULATE_DTYPE, copy=True)
        chunk.mul_(weights[start : start + step].to(out.device).sqrt()[:, None])
        out.addmm_(chunk.T, chunk)


def _solve_spd_in_place(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """``system^-1 rhs`` for a symmetric positive definite ``system``, overwriting ``system`` with its
    Cholesky factor.

    Why in place: for the 4096-wide FLUX/SD3 text input the float64 system is 128 MiB, and a plain
    ``cholesky_solve(rhs, cholesky(system))`` holds two more copies of it (the factor and LAPACK's
    column-major work copy). ``system`` is symmetric, so its transpose view is already the column-major
    layout LAPACK factorises in place; two triangular solves then read the factor without copying it.
    """
    column_major = system.mT
    info = torch.empty((), dtype=torch.int32, device=system.device)
    torch.linalg.cholesky_ex(column_major, out=(column_major, info))
    if int(info) != 0:
        raise SolveError(
            "the edit's system is not positive definite (non-finite or degenerate vectors); "
            "raise lambda or check the text encoder output"
        )
    lower = column_major  # triangular solves read only the lower triangle
    half = torch.linalg.solve_triangular(lower, rhs, upper=False)
    return torch.linalg.solve_triangular(lower.mT, half, upper=True)


def retained_span(
    problem: InputSpaceProblem, threshold: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal bases ``(B [d, q], N [d, d - q])`` of the weighted retained span and its complement.

    One eigendecomposition of ``sum w_j r_j r_j^T`` gives both: eigenvectors whose eigenvalue exceeds
    ``threshold * largest`` span the protected directions, the rest their orthogonal complement.
    """
    d = problem.width
    gram = torch.zeros(d, d, dtype=ACCUMULATE_DTYPE, device=device)
    _gram(problem.retained, problem.retained_weights, gram)
    evals, evecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    if evals.numel() == 0 or evals[-1] <= 0:
        return evecs[:, :0], evecs
    kept = evals > threshold * evals[-1]
    return evecs[:, kept], evecs[:, ~kept]


def solve_input_space(
    problem: InputSpaceProblem,
    lam: float,
    strict: bool = False,
    strict_threshold: float = DEFAULT_STRICT_THRESHOLD,
    device: torch.device | str | None = None,
) -> InputSpaceEdit:
    """Solve eq. (3), or eq. (4) in strict mode, for one input space."""
    if not (lam > 0 and lam < float("inf")):
        raise SolveError(f"lambda must be a finite number > 0 (got {lam}); it keeps the system well posed")
    device = torch.device(device) if device is not None else problem.targets.device
    d = problem.width
    f64 = {"device": device, "dtype": ACCUMULATE_DTYPE}

    gram = torch.zeros(d, d, **f64)
    _gram(problem.targets, problem.target_scales, gram)
    _gram(problem.retained, problem.retained_weights, gram)
    _gram(problem.context_inputs, problem.context_weights, gram)

    c = problem.targets.to(**f64)
    a = problem.anchors.to(**f64)
    rp = problem.context_inputs.to(**f64)
    r = problem.context_outputs.to(**f64)
    left = torch.cat([(a - c) * problem.target_scales.to(device)[:, None],
                      (r - rp) * problem.context_weights.to(device)[:, None]]).T  # P [d, n+k]
    inputs = torch.cat([c, rp]).T  # [d, n+k]

    retained_rank = 0
    if strict and problem.retained.shape[0] > 0:
        basis, complement = retained_span(problem, strict_threshold, device)
        retained_rank = basis.shape[1]
        reduced = complement.T @ gram @ complement
        del gram
        reduced.diagonal().add_(lam)
        right = complement @ _solve_spd_in_place(reduced, complement.T @ inputs)
    else:
        gram.diagonal().add_(lam)
        right = _solve_spd_in_place(gram, inputs)
    return InputSpaceEdit(left, right, strict, retained_rank)

