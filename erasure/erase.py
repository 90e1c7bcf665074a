"""The one flow: concept set + text encoder + edit sites -> closed-form edit -> Delta + report.

Which token vectors each concept contributes (see :mod:`erasure.vectors` for the scopes):

* target ``c``: the scope's positions in ``template.format(target)``; its anchor ``a``: the vectors at the
  *same positions* of ``template.format(anchor)`` (the empty anchor reads as the template alone), so the
  edit makes every position the target occupies read like the anchor prompt there;
* retained ``r``: the scope's positions in ``template.format(retained)``;
* context pair ``r' -> r``: the concept's own tokens inside the context prompt, paired from the end with
  its tokens in ``template.format(concept)`` for the first template. Only the phrase tokens are used:
  later positions of the context prompt also carry the target and must stay free to be erased.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from . import __version__
from .concepts import ConceptSet
from .delta import Delta, LowRankUpdate, metadata_json
from .report import EraseReport, RetainedRow, TargetRow
from .sites import EditSite, SiteError, group_by_width
from .solve import DEFAULT_STRICT_THRESHOLD, InputSpaceProblem, SolveError, solve_input_space
from .vectors import TOKEN_SCOPES, EncodedPrompt, TextEncoder, TokenScope

ProgressFn = Callable[[int, int], None]
"""Called as ``progress(done, total)``; may raise to interrupt (nothing is returned then)."""
ENCODE_BATCH = 32


@dataclass(frozen=True)
class EraseSettings:
    """Parameters of the closed-form edit (``solve`` eq. 1).

    erase_scale:   ``s_i`` of every target vector.
    retain_scale:  multiplies each retained concept's own weight (``w_j = retain_scale * weight``).
    context_scale: multiplies each context pair's weight (``u_k``).
    lam:           ridge ``lambda``; larger keeps the edit closer to the original where no concept speaks.
    strict:        keep the retained span exactly (``solve`` eq. 4).
    """

    erase_scale: float = 1.0
    retain_scale: float = 1.0
    context_scale: float = 1.0
    lam: float = 0.1
    strict: bool = False
    strict_threshold: float = DEFAULT_STRICT_THRESHOLD
    token_scope: TokenScope = "concept_to_eos"

    def __post_init__(self) -> None:
        if self.token_scope not in TOKEN_SCOPES:
            raise SolveError(f"token scope {self.token_scope!r} is not one of {', '.join(TOKEN_SCOPES)}")
        for name in ("erase_scale", "retain_scale", "context_scale", "strict_threshold"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise SolveError(f"{name} must be a finite number >= 0 (got {value})")


@dataclass(frozen=True)
class ConceptVectors:
    """Every vector the solve needs, with which concept each row came from."""

    targets: torch.Tensor
    anchors: torch.Tensor
    target_owner: list[int]  # row -> index into concept_set.targets
    retained: torch.Tensor
    retained_weights: torch.Tensor
    retained_owner: list[int]  # row -> index into concept_set.retained
    context_inputs: torch.Tensor
    context_outputs: torch.Tensor
    context_weights: torch.Tensor


@dataclass
class EraseResult:
    delta: Delta
    report: EraseReport


def encode_all(
    encoder: TextEncoder, requests: Sequence[tuple[str, str]], progress: Callable[[], None] | None = None
) -> dict[tuple[str, str], EncodedPrompt]:
    """Encode each distinct ``(prompt, phrase)`` once, in batches."""
    unique = list(dict.fromkeys(requests))
    encoded: dict[tuple[str, str], EncodedPrompt] = {}
    for start in range(0, len(unique), ENCODE_BATCH):
        batch = unique[start : start + ENCODE_BATCH]
        results = encoder.encode([p for p, _ in batch], [ph for _, ph in batch])
        encoded.update(zip(batch, results))
        if progress is not None:
            progress()
    return encoded


def _fill(template: str, concept: str) -> str:
    return " ".join(template.replace("{}", concept).split())


def concept_vectors(
    encoder: TextEncoder, concepts: ConceptSet, settings: EraseSettings, progress: Callable[[], None] | None = None
) -> ConceptVectors:
    """Encode the concept set and pick the rows of each group (module docstring)."""
    scope = settings.token_scope
    # Order matters to encoders that stop at the longest end-of-text seen so far (the ComfyUI CLIP
    # adapter): each template's targets come before their anchors, so an anchor is always encoded at
    # least as long as the target positions it is read at.
    requests = []
    for template in concepts.templates:
        requests += [(_fill(template, t.concept), t.concept) for t in concepts.targets]
        requests += [(_fill(template, t.anchor), t.anchor) for t in concepts.targets]
        requests += [(_fill(template, r.concept), r.concept) for r in concepts.retained]
    first = concepts.templates[0]
    requests += [(p.context, p.concept) for p in concepts.context_pairs]
    requests += [(_fill(first, p.concept), p.concept) for p in concepts.context_pairs]
    enc = encode_all(encoder, requests, progress)

    targets, anchors, target_owner = [], [], []
    retained, retained_weights, retained_owner = [], [], []
    for template in concepts.templates:
        for i, t in enumerate(concepts.targets):
            target = enc[(_fill(template, t.concept), t.concept)]
            anchor = enc[(_fill(template, t.anchor), t.anchor)]
            positions = _positions(target, scope)
            targets.append(target.vectors[positions])
            anchors.append(anchor.vectors[positions.clamp(max=anchor.vectors.shape[0] - 1)])
            target_owner += [i] * len(positions)
        for j, r in enumerate(concepts.retained):
            rows = enc[(_fill(template, r.concept), r.concept)].select(scope)
            retained.append(rows)
            retained_weights += [r.weight * settings.retain_scale] * rows.shape[0]
            retained_owner += [j] * rows.shape[0]
    context_inputs, context_outputs, context_weights = [], [], []
    for p in concepts.context_pairs:
        inside = enc[(p.context, p.concept)]
        alone = enc[(_fill(first, p.concept), p.concept)]
        n = min(len(inside.phrase), len(alone.phrase))
        context_inputs.append(inside.vectors[inside.phrase[len(inside.phrase) - n :]])
        context_outputs.append(alone.vectors[alone.phrase[len(alone.phrase) - n :]])
        context_weights += [p.weight * settings.context_scale] * n

    width = encoder.width
    cat = lambda rows: torch.cat(rows).float() if rows else torch.zeros(0, width)  # noqa: E731
    return ConceptVectors(
        cat(targets), cat(anchors), target_owner,
        cat(retained), torch.tensor(retained_weights, dtype=torch.float64), retained_owner,
        cat(context_inputs), cat(context_outputs), torch.tensor(context_weights, dtype=torch.float64),
    )


def _positions(encoded: EncodedPrompt, scope: TokenScope) -> torch.Tensor:
    if scope == "concept":
        return encoded.phrase
    if scope == "concept_to_eos":
        return torch.cat([encoded.phrase, encoded.tail])
    return torch.arange(encoded.vectors.shape[0])


def erase(
    sites: Sequence[EditSite],
    encoder: TextEncoder,
    concepts: ConceptSet,
    settings: EraseSettings = EraseSettings(),
    device: torch.device | str | None = None,
    progress: ProgressFn | None = None,
) -> EraseResult:
    """Erase ``concepts.targets`` from every site while sparing the retained set; returns a Delta and a report.

    The input tensors are never modified. Work runs on ``device`` (the sites' device by default).
    """
    if not sites:
        raise SiteError("no edit sites given")
    groups = group_by_width(sites)
    if set(groups) != {encoder.width}:
        raise SiteError(
            f"the text encoder gives {encoder.width}-wide token vectors but the model's text-reading maps "
            f"take {', '.join(map(str, sorted(groups)))}; the CLIP/text encoder does not belong to this model"
        )
    started = time.perf_counter()
    n_batches = -(-_request_count(concepts) // ENCODE_BATCH)
    total = n_batches + 1 + len(sites)
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    vectors = concept_vectors(encoder, concepts, settings, step)
    done = n_batches  # dedupe may have needed fewer batches than counted
    problem = InputSpaceProblem.build(
        vectors.targets, vectors.anchors, vectors.retained,
        erase_scale=settings.erase_scale, retained_weights=vectors.retained_weights,
        context_inputs=vectors.context_inputs, context_outputs=vectors.context_outputs,
        context_weights=vectors.context_weights,
    )
    encoded_at = time.perf_counter()
    edit = solve_input_space(problem, settings.lam, settings.strict, settings.strict_threshold, device)
    step()
    updates: dict[str, LowRankUpdate] = {}
    for site in sites:
        up, down = edit.factors(site.weight)
        updates[site.name] = LowRankUpdate(up.float().cpu(), down.float().cpu())
        step()
    solved_at = time.perf_counter()

    report = measure(sites, updates, vectors, concepts)
    report.settings = asdict(settings)
    report.stats = {
        "sites": len(sites), "rank": edit.rank, "protected_rank": edit.retained_rank,
        "encode_s": round(encoded_at - started, 3), "solve_s": round(solved_at - encoded_at, 3),
    }
    metadata = {
        "version": __version__,
        "method": "closed_form_strict" if settings.strict else "closed_form",
        "concepts": concepts.to_json(),
        "targets": metadata_json([t.concept for t in concepts.targets]),
        "anchors": metadata_json([t.anchor for t in concepts.targets]),
        "retained": metadata_json([r.concept for r in concepts.retained]),
        "settings": metadata_json(asdict(settings)),
    }
    return EraseResult(Delta(updates, metadata), report)


def _request_count(concepts: ConceptSet) -> int:
    per_template = 2 * len(concepts.targets) + len(concepts.retained)
    return per_template * len(concepts.templates) + 2 * len(concepts.context_pairs)


def measure(
    sites: Sequence[EditSite], updates: dict[str, LowRankUpdate], vectors: ConceptVectors, concepts: ConceptSet
) -> EraseReport:
    """Target residuals and retained drifts at the sites (``report`` module docstring)."""
    n_t, n_r = len(concepts.targets), len(concepts.retained)
    res_num = torch.zeros(n_t, dtype=torch.float64)
    res_den = torch.zeros(n_t, dtype=torch.float64)
    drift_num = torch.zeros(n_r, dtype=torch.float64)
    drift_den = torch.zeros(n_r, dtype=torch.float64)
    t_owner = torch.tensor(vectors.target_owner, dtype=torch.long)
    r_owner = torch.tensor(vectors.retained_owner, dtype=torch.long)
    c, a, r = (x.double() for x in (vectors.targets, vectors.anchors, vectors.retained))
    for site in sites:
        w = site.weight.double().cpu()
        u = updates[site.name]
        up, down = u.up.double(), u.down.double()
        gap = (c - a) @ w.T  # W c - W a
        moved = gap + (c @ down.T) @ up.T  # W' c - W a
        res_num.index_add_(0, t_owner, moved.pow(2).sum(1))
        res_den.index_add_(0, t_owner, gap.pow(2).sum(1))
        if n_r:
            drift_num.index_add_(0, r_owner, ((r @ down.T) @ up.T).pow(2).sum(1))
            drift_den.index_add_(0, r_owner, (r @ w.T).pow(2).sum(1))
    residual = (res_num / res_den.clamp_min(1e-30)).sqrt()
    drift = (drift_num / drift_den.clamp_min(1e-30)).sqrt()
    return EraseReport(
        [TargetRow(t.concept, t.anchor, float(residual[i])) for i, t in enumerate(concepts.targets)],
        [RetainedRow(x.concept, x.weight, x.care, float(drift[j])) for j, x in enumerate(concepts.retained)],
    )
