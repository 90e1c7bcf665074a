"""One call per use case, shared by the CLI (:mod:`erasure.commands.neighbors`) and the ComfyUI nodes.

* :func:`risk_scan` -- rank a vocabulary by the collateral damage of an edit (``scan``);
* :func:`suggest_care` -- a CARE set for a concept set's targets by the ``text`` or ``risk`` method;
* :func:`naive_edit` -- the edit erasing the targets with no retained set (what ``risk`` scans).

The vocabulary is encoded together with the targets (they need not be in it), through the cache of
:mod:`.embed`. A :class:`~.risk.RiskIndex` (the model-dependent half of a scan) is kept in memory for the
last few (encoder, vocabulary, model) combinations, so "erase -> scan -> protect -> re-erase" pays for it once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..concepts import ConceptSet, Target
from ..delta import LowRankUpdate
from ..erase import EraseSettings, erase
from ..sites import EditSite
from ..vectors import TextEncoder, TokenScope
from .embed import (
    DEFAULT_SCOPE,
    DEFAULT_TEMPLATE,
    VocabularyEmbedding,
    embed_vocabulary,
    encoder_fingerprint,
    state_fingerprint,
)
from .relation import RELATED_Z, SYNONYM_RESIDUAL, Relation, relate
from .risk import DEFAULT_DENOISER_TOP_K, DenoiserDrift, RiskIndex, RiskReport, scan
from .suggest import DEFAULT_TOP_K, Suggestion, suggest_from_risk, suggest_from_text
from .vocab import Vocabulary, normalise

INDEX_MEMORY = 2
"""How many risk indexes stay in memory (one model, or an A/B of two)."""
_INDEXES: OrderedDict[tuple, RiskIndex] = OrderedDict()


@dataclass(frozen=True)
class NeighborSettings:
    """How concepts are encoded and judged (see :mod:`.relation` and :mod:`.suggest`)."""

    template: str = DEFAULT_TEMPLATE
    token_scope: TokenScope = DEFAULT_SCOPE
    synonym_residual: float = SYNONYM_RESIDUAL
    related_z: float = RELATED_Z
    top_k: int = DEFAULT_TOP_K
    cache_dir: str | None = None
    use_cache: bool = True


@dataclass(frozen=True)
class Prepared:
    vocabulary: Vocabulary
    embedding: VocabularyEmbedding  # the vocabulary's concepts, in order
    relation: Relation
    stats: dict[str, object]


def _targets(concepts: ConceptSet | Sequence[str]) -> list[str]:
    if isinstance(concepts, ConceptSet):
        return [t.concept for t in concepts.targets]
    out = [normalise(c) for c in concepts if normalise(c)]
    if not out:
        raise ValueError("no target concept given")
    return out


def prepare(encoder: TextEncoder, vocabulary: Vocabulary, targets: Sequence[str], settings: NeighborSettings) -> Prepared:
    """Encode vocabulary + targets (cached) and relate the vocabulary to the targets."""
    if not len(vocabulary):
        raise ValueError("the vocabulary is empty")
    names = [normalise(t) for t in targets]
    everything, stats = embed_vocabulary(
        encoder, list(vocabulary.concepts) + names, settings.template, settings.token_scope,
        settings.cache_dir, settings.use_cache,
    )
    vocab_emb = everything.subset(vocabulary.concepts)
    pooled = vocab_emb.pooled()
    relation = relate(vocabulary.concepts, pooled, names, everything.subset(names).pooled(),
                      mean=pooled.mean(0), synonym_residual=settings.synonym_residual)
    return Prepared(vocabulary, vocab_emb, relation, stats)


def risk_index(sites: Sequence[EditSite], encoder: TextEncoder, prepared: Prepared, settings: NeighborSettings) -> RiskIndex:
    """The model-dependent half of a scan, memoised when the encoder has a fingerprint."""
    fingerprint = encoder_fingerprint(encoder)
    key = None
    if fingerprint is not None:
        # The weights' content, not their identity: ComfyUI hands out freshly patched inference tensors
        # (no version counter; a freed tensor's address is reused), and hashing is cheaper than the build.
        site_key = state_fingerprint({s.name: s.weight for s in sites})
        key = (fingerprint, settings.template, settings.token_scope, prepared.vocabulary.digest(), site_key)
        if key in _INDEXES:
            _INDEXES.move_to_end(key)
            return _INDEXES[key]
    index = RiskIndex.build(sites, prepared.embedding, prepared.vocabulary.categories)
    if key is not None:
        _INDEXES[key] = index
        while len(_INDEXES) > INDEX_MEMORY:
            _INDEXES.popitem(last=False)
    return index


def naive_edit(
    sites: Sequence[EditSite], encoder: TextEncoder, concepts: ConceptSet | Sequence[str],
    erase_settings: EraseSettings = EraseSettings(),
) -> dict[str, LowRankUpdate]:
    """The edit erasing only the targets (anchors and templates kept, retained set and context pairs dropped)."""
    if isinstance(concepts, ConceptSet):
        bare = ConceptSet(concepts.targets, templates=concepts.templates)
    else:
        bare = ConceptSet(tuple(Target(t) for t in _targets(concepts)))
    return erase(sites, encoder, bare, erase_settings).delta.updates


def risk_scan(
    sites: Sequence[EditSite], encoder: TextEncoder, vocabulary: Vocabulary, updates: dict[str, LowRankUpdate],
    targets: ConceptSet | Sequence[str], settings: NeighborSettings = NeighborSettings(), top_k: int | None = None,
    denoiser_drift: DenoiserDrift | None = None, denoiser_top_k: int = DEFAULT_DENOISER_TOP_K,
) -> RiskReport:
    """Rank ``vocabulary`` by the drift ``updates`` cause (targets and near-synonyms listed apart)."""
    prepared = prepare(encoder, vocabulary, _targets(targets), settings)
    index = risk_index(sites, encoder, prepared, settings)
    report = scan(index, updates, prepared.relation, top_k, denoiser_drift, denoiser_top_k)
    report.stats.update({"encoded": prepared.stats["encoded"], "cached": prepared.stats["cached"],
                         "index_s": round(index.build_seconds, 4)})
    return report


def suggest_care(
    method: str, sites: Sequence[EditSite], encoder: TextEncoder, vocabulary: Vocabulary,
    concepts: ConceptSet | Sequence[str], settings: NeighborSettings = NeighborSettings(),
    erase_settings: EraseSettings = EraseSettings(),
) -> Suggestion:
    """A CARE set for the targets of ``concepts`` by the ``text`` or ``risk`` method (:mod:`.suggest`)."""
    if method not in ("text", "risk"):
        raise ValueError(f"method {method!r}: choose 'text' or 'risk' here ('image' needs a sampler and a detector)")
    targets = _targets(concepts)
    prepared = prepare(encoder, vocabulary, targets, settings)
    if method == "text":
        out = suggest_from_text(vocabulary.concepts, vocabulary.categories, prepared.relation, targets,
                                settings.top_k, settings.related_z)
    else:
        index = risk_index(sites, encoder, prepared, settings)
        with torch.no_grad():
            updates = naive_edit(sites, encoder, concepts, erase_settings)
        out = suggest_from_risk(index, updates, prepared.relation, targets, settings.top_k, settings.related_z)
    out.stats.update({"encoded": prepared.stats["encoded"], "cached": prepared.stats["cached"]})
    return out
