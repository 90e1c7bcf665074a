r"""CARE-set suggestions: which benign concepts to protect while erasing the targets.

Three methods, each returning a :class:`Suggestion` (suggested concepts, ranked, plus flagged ones):

``text`` -- neighbours in the text encoder's space (:mod:`.relation`):
  1. centre and normalise the pooled vectors of the vocabulary and the targets; measure every concept's
     alignment ``alpha`` (cosine to the nearest target) and residual ``rho = sqrt(1 - alpha^2)``;
  2. remove the low-residual extreme: near-synonyms (``rho <= synonym_residual``) and concepts containing
     a target's words are *flagged* -- they should be erased too, never protected;
  3. remove the high-residual bulk: concepts whose alignment is not exceptional for the vocabulary
     (robust z-score below ``related_z``) are unrelated;
  4. rank the rest by alignment and keep the ``top_k``.

``risk`` -- model-internal: the concepts a *naive* erasure of the targets (no retained set) damages most
  at the edit sites (:mod:`.risk`, eq. 1), after the same flags (step 2); those whose drift is not
  exceptional (robust z-score below ``related_z``) are dropped. The edit reads exactly the vectors that
  the denoiser reads, so this ranks by predicted damage rather than by similarity.

``image`` -- what the model draws with the targets (:mod:`.image`): the fraction of generated target
  images in which a detector finds each other concept; concepts seen in at least ``min_frequency`` of
  them are kept, most frequent first (the CARE paper builds its CARE-set from target images the same way).

``denoiser`` -- the ``text`` procedure run on the denoiser's first clean-image estimates of each concept
  (:func:`suggest_from_predictions`): a cheap, sampler-free stand-in for the image method.

Precision@k and recall@k in the benchmarks count the returned list, which may hold fewer than ``k``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch

from .relation import RELATED_Z, Relation, robust_z
from .risk import RiskIndex, exclusion_reason
from .vocab import normalise

DEFAULT_TOP_K = 5
"""How many concepts a suggestion returns at most (the CARE set a person can still read at a glance)."""
METHODS = ("text", "risk", "image", "denoiser")


@dataclass(frozen=True)
class Candidate:
    concept: str
    category: str
    score: float  # the method's ranking value: alignment (text), drift (risk), frequency (image)
    z: float | None = None  # robust z-score of the score over the vocabulary (text, risk)


@dataclass(frozen=True)
class Flagged:
    concept: str
    category: str
    reason: str  # "near-synonym" | "contains target" | "target"
    score: float


@dataclass
class Suggestion:
    method: str
    targets: list[str]
    suggested: list[Candidate]
    flagged: list[Flagged] = field(default_factory=list)
    stats: dict[str, object] = field(default_factory=dict)

    @property
    def concepts(self) -> list[str]:
        return [c.concept for c in self.suggested]

    def care_text(self) -> str:
        """One concept per line: the CARE list of a concept set."""
        return "\n".join(self.concepts)

    def erase_text(self) -> str:
        """Flagged near-synonyms, one per line: candidates to add to the targets."""
        return "\n".join(f.concept for f in self.flagged if f.reason == "near-synonym")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    def as_table(self) -> str:
        lines = [f"CARE suggestion ({self.method}) for: {', '.join(self.targets)}",
                 "rank  concept                    category    score      z"]
        for i, c in enumerate(self.suggested, 1):
            z = "" if c.z is None else f"{c.z:6.1f}"
            lines.append(f"{i:4d}  {c.concept[:26]:<26} {c.category[:10]:<10} {c.score:7.4f} {z}")
        if not self.suggested:
            lines.append("      (nothing passed the filters)")
        if self.flagged:
            lines += ["", "flagged (erase these too, do not protect them):"]
            lines += [f"      {f.concept[:26]:<26} {f.reason:<16} {f.score:.4f}" for f in self.flagged]
        return "\n".join(lines)


def _flags(relation: Relation, concepts: Sequence[str], categories: Sequence[str], score: torch.Tensor) -> list[Flagged]:
    out = []
    for i in relation.excluded.nonzero().flatten().tolist():
        reason = exclusion_reason(relation, i)
        if reason is not None and reason != "target":
            out.append(Flagged(concepts[i], categories[i], reason, float(score[i])))
    return sorted(out, key=lambda f: -f.score)


def _rank(
    method: str, targets: Sequence[str], concepts: Sequence[str], categories: Sequence[str], score: torch.Tensor,
    relation: Relation, top_k: int, related_z: float, stats: dict[str, object],
) -> Suggestion:
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (got {top_k})")
    kept = (~relation.excluded).nonzero().flatten()
    z = robust_z(score, score[kept]) if kept.numel() else torch.zeros_like(score, dtype=torch.float64)
    related = kept[z[kept] >= related_z]
    order = related[torch.argsort(score[related], descending=True, stable=True)][:top_k]
    score_list, z_list = score.tolist(), z.tolist()
    suggested = [Candidate(concepts[i], categories[i], score_list[i], z_list[i]) for i in order.tolist()]
    stats = {**stats, "vocabulary": len(concepts), "related": int(related.numel()), "related_z": related_z}
    return Suggestion(method, [normalise(t) for t in targets], suggested, _flags(relation, concepts, categories, score), stats)


def suggest_from_text(
    concepts: Sequence[str], categories: Sequence[str], relation: Relation, targets: Sequence[str],
    top_k: int = DEFAULT_TOP_K, related_z: float = RELATED_Z,
) -> Suggestion:
    """The ``text`` method (module docstring); ``relation`` from :func:`.relation.relate`."""
    return _rank("text", targets, concepts, categories, relation.alignment, relation, top_k, related_z, {})


def suggest_from_risk(
    index: RiskIndex, naive_updates: dict, relation: Relation, targets: Sequence[str],
    top_k: int = DEFAULT_TOP_K, related_z: float = RELATED_Z,
) -> Suggestion:
    """The ``risk`` method: ``naive_updates`` is the edit erasing ``targets`` with no retained set."""
    drift = index.drift(naive_updates)
    return _rank("risk", targets, index.embedding.concepts, index.categories, drift, relation, top_k, related_z, {})


def suggest_from_predictions(
    concepts: Sequence[str], categories: Sequence[str], predictions: torch.Tensor, targets: Sequence[str],
    target_predictions: torch.Tensor, top_k: int = DEFAULT_TOP_K, related_z: float = RELATED_Z,
    synonym_residual: float | None = None,
) -> Suggestion:
    """The ``denoiser`` method: the ``text`` procedure run on what the *denoiser* makes of each concept.

    ``predictions[i]`` is a flattened summary of the denoiser's output for a prompt naming concept ``i``
    (e.g. the mean one-step clean-image estimate ``x0_hat`` from pure noise over a few fixed seeds: the
    layout and colours the model commits to first), ``target_predictions`` the same for the targets.
    Co-occurring concepts share most of that picture (the water under a boat), so they align; the same
    residual/containment flags and robust z-score cut as the text method apply.
    """
    from .relation import SYNONYM_RESIDUAL, relate

    relation = relate(concepts, predictions.double(), targets, target_predictions.double(),
                      synonym_residual=SYNONYM_RESIDUAL if synonym_residual is None else synonym_residual)
    return _rank("denoiser", targets, concepts, categories, relation.alignment, relation, top_k, related_z, {})
