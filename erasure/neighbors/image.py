r"""Image-side CARE suggestion: draw the targets, see what else the model puts in the picture.

The model is asked for ``n_images`` images of each target (prompts ``template.format(target)``, seeds
``seed, seed + 1, ...``). A detector says which concepts each image shows; the frequency ``f_t(c)`` of a
concept is the fraction of target images it appears in. Frequent concepts are the ones the model has
learnt to draw *with* the target -- exactly the ones an erasure damages (water under a boat).

A concept the model draws everywhere (a bias of the model or a false alarm of the detector) is frequent
in target images too without being tied to the target. So the same seeds are also drawn from a
*baseline* prompt (the empty prompt by default) and each concept's **lift** is compared, with add-one
(Laplace) smoothing so that unseen concepts do not divide by zero:

.. math::  \mathrm{lift}(c) = \frac{(k_t + 1)/(n_t + 2)}{(k_b + 1)/(n_b + 2)}

(``k`` detections out of ``n`` images, target ``t`` and baseline ``b``). A concept is suggested when
``f_t(c) >= min_frequency`` and ``lift(c) >= min_lift``, most frequent first, after removing the targets,
concepts containing a target's words, flagged near-synonyms and any concept the caller excludes (e.g.
labels that are not benign). ``baseline_prompt=None`` skips the baseline (frequency only).

Detectors plug in as a function ``images -> {concept: presence per image}``: the toy world's detector, or
a CLIP model scored against the vocabulary through :func:`top_m_detections`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .relation import contains_words
from .suggest import DEFAULT_TOP_K, Candidate, Flagged, Suggestion
from .vocab import normalise

Generate = Callable[[Sequence[str], Sequence[int]], torch.Tensor]
"""``(prompts, seeds) -> images [N, C, H, W]`` (one image per prompt, from its own seed)."""
Detect = Callable[[torch.Tensor], Mapping[str, Sequence[bool]]]
"""``images -> {concept: presence of the concept in each image}``."""
DEFAULT_IMAGES = 32
"""Images per target: a concept present in 25% of them is then seen ~8 times (binomial sd ~ 2.4)."""
DEFAULT_MIN_FREQUENCY = 0.25
"""A concept must appear in at least this fraction of target images to count as co-occurring."""
DEFAULT_MIN_LIFT = 2.0
"""...and at least twice as often as in the baseline images (it comes *with* the target)."""
DEFAULT_BASELINE_PROMPT = ""
"""The baseline: what the model draws when asked for nothing in particular."""


def top_m_detections(scores: torch.Tensor, labels: Sequence[str], top_m: int) -> dict[str, np.ndarray]:
    """Turn image-vs-vocabulary similarity scores ``[N, V]`` (e.g. CLIP cosines) into detections: a label is
    present in an image when it is among that image's ``top_m`` highest scores."""
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"scores must be [images, {len(labels)}], got {tuple(scores.shape)}")
    top_m = max(1, min(top_m, len(labels)))
    top = scores.topk(top_m, dim=1).indices
    present = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)
    return {label: present[:, j].numpy() for j, label in enumerate(labels)}


def detections_from_classifier(classifier: object, images: torch.Tensor, concepts: Sequence[str]) -> dict[str, np.ndarray]:
    """Detections from a classifier with ``knows(concept)`` and ``present(images, concept) -> bool [N]`` (the
    audit's :class:`erasure.audit.care.Classifier`, e.g. a zero-shot CLIP over the vocabulary); concepts it
    cannot judge are left out."""
    return {c: np.asarray(classifier.present(images, c), dtype=bool) for c in concepts if classifier.knows(c)}  # type: ignore[attr-defined]


def _lifts(detections: Mapping[str, Sequence[bool]], baseline: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Laplace-smoothed ratio of detection rates, target images over baseline images (module docstring)."""
    base = {normalise(k): np.asarray(v, dtype=bool) for k, v in baseline.items()}
    out = {}
    for key, values in detections.items():
        hits = np.asarray(values, dtype=bool)
        b = base.get(normalise(key), np.zeros(0, dtype=bool))
        out[normalise(key)] = float((hits.sum() + 1) / (hits.size + 2) / ((b.sum() + 1) / (b.size + 2)))
    return out


def detection_frequencies(detections: Mapping[str, Sequence[bool]]) -> dict[str, float]:
    """Fraction of images each concept is present in."""
    return {normalise(k): float(np.asarray(v, dtype=bool).mean()) if len(v) else 0.0 for k, v in detections.items()}


def suggest_from_images(
    generate: Generate,
    detect: Detect,
    targets: Sequence[str],
    templates: Sequence[str] = ("{}",),
    n_images: int = DEFAULT_IMAGES,
    seed: int = 0,
    min_frequency: float = DEFAULT_MIN_FREQUENCY,
    top_k: int = DEFAULT_TOP_K,
    exclude: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    categories: Mapping[str, str] | None = None,
    baseline_prompt: str | None = DEFAULT_BASELINE_PROMPT,
    baseline: Mapping[str, Sequence[bool]] | None = None,
    min_lift: float = DEFAULT_MIN_LIFT,
) -> Suggestion:
    """The ``image`` method (module docstring): generate, detect, then :func:`suggest_from_detections`.

    ``baseline`` (detections on baseline images drawn elsewhere, e.g. shared by several targets) takes the
    place of drawing ``n_images`` of ``baseline_prompt`` here."""
    if n_images < 1:
        raise ValueError(f"need at least one image per target (got {n_images})")
    prompts, seeds = [], []
    for target in targets:
        for i in range(n_images):
            template = templates[i % len(templates)]
            prompts.append(" ".join(template.replace("{}", target).split()))
            seeds.append(seed + i)
    if baseline is None and baseline_prompt is not None:
        baseline = detect(generate([baseline_prompt] * n_images, [seed + i for i in range(n_images)]))
    return suggest_from_detections(
        detect(generate(prompts, seeds)), targets, min_frequency, top_k, exclude, flags, categories, baseline, min_lift
    )


def suggest_from_detections(
    detections: Mapping[str, Sequence[bool]],
    targets: Sequence[str],
    min_frequency: float = DEFAULT_MIN_FREQUENCY,
    top_k: int = DEFAULT_TOP_K,
    exclude: Sequence[str] = (),
    flags: Mapping[str, str] | None = None,
    categories: Mapping[str, str] | None = None,
    baseline: Mapping[str, Sequence[bool]] | None = None,
    min_lift: float = DEFAULT_MIN_LIFT,
) -> Suggestion:
    """Rank what a detector found in images of the targets (made elsewhere, e.g. by ComfyUI's sampler).

    ``flags`` maps concepts already flagged by the text side (near-synonyms) to their reason;
    ``categories`` names each concept's category for the report; ``baseline`` holds detections on
    baseline images (module docstring; ``None``: no lift test).
    """
    if not 0.0 < min_frequency <= 1.0:
        raise ValueError(f"min_frequency must lie in (0, 1] (got {min_frequency})")
    images = max((len(v) for v in detections.values()), default=0)
    freq = detection_frequencies(detections)
    lift = _lifts(detections, baseline) if baseline is not None else {}
    target_names = {normalise(t) for t in targets}
    dropped = {normalise(e) for e in exclude}
    flags = {normalise(k): v for k, v in (flags or {}).items()}
    categories = {normalise(k): v for k, v in (categories or {}).items()}
    suggested, flagged = [], []
    for concept, f in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0])):
        category = categories.get(concept, "detected")
        if concept in target_names or concept in dropped:
            continue
        reason = flags.get(concept) or ("contains target" if any(contains_words(concept, t) for t in target_names) else None)
        if reason is not None:
            if f > 0:
                flagged.append(Flagged(concept, category, reason, f))
            continue
        if f >= min_frequency and lift.get(concept, min_lift) >= min_lift:
            suggested.append(Candidate(concept, category, f))
    stats = {"images": images, "min_frequency": min_frequency, "frequencies": freq,
             "min_lift": min_lift if baseline is not None else None, "lifts": lift}
    return Suggestion("image", sorted(target_names), suggested[:top_k], flagged, stats)
