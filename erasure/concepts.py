"""Concept sets: what to erase, what to map it to, and what must be spared.

A :class:`ConceptSet` holds

* **targets** -- concepts to erase, each with an *anchor* (guide) it should look like afterwards;
  the default anchor is the empty prompt, i.e. "behave as if the concept were not mentioned";
* **retained** concepts with weights -- the preservation set. Those tagged ``care`` are CARE
  neighbours (concepts that co-occur with a target, e.g. *water* for *boat*) and by default weigh more
  than the general preservation set, because they are the ones an erasure damages first;
* **context pairs** -- a retained concept seen *inside* a target context (``"water"`` in
  ``"a boat on water"``) whose output should equal that of the concept on its own;
* **templates** -- prompt patterns (``"a photo of {}"``) each concept is written into.

Text format (one entry per line; blank lines and ``#`` comments ignored; commas also separate entries):

* targets:   ``boat`` or ``boat -> sea`` (erase *boat*, make it read like *sea*);
* retained:  ``water`` or ``water : 2.5`` (weight);
* contexts:  ``a boat on water => water`` (context prompt => retained concept it contains).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace

DEFAULT_RETAIN_WEIGHT = 1.0
"""Weight of a general preservation concept (the ``s_p`` of the published closed form)."""
DEFAULT_CARE_WEIGHT = 2.0
"""Weight of a CARE neighbour: co-occurring concepts are the ones erasure damages first."""
DEFAULT_TEMPLATES = ("{}",)


class ConceptError(ValueError):
    """A concept set a user must fix; the message says what and how."""


def _norm(concept: str) -> str:
    return " ".join(concept.strip().lower().split())


@dataclass(frozen=True)
class Target:
    """Erase ``concept`` by mapping its token vectors' outputs onto those of ``anchor``."""

    concept: str
    anchor: str = ""


@dataclass(frozen=True)
class Retained:
    """Keep the outputs of ``concept`` with weight ``weight``; ``care`` marks a co-occurring neighbour."""

    concept: str
    weight: float = DEFAULT_RETAIN_WEIGHT
    care: bool = False


@dataclass(frozen=True)
class ContextPair:
    """The tokens of ``concept`` inside prompt ``context`` should read as ``concept`` alone."""

    context: str
    concept: str
    weight: float = DEFAULT_CARE_WEIGHT


@dataclass(frozen=True)
class ConceptSet:
    targets: tuple[Target, ...]
    retained: tuple[Retained, ...] = ()
    context_pairs: tuple[ContextPair, ...] = ()
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES)

    def __post_init__(self) -> None:
        # Accept lists from callers, store tuples so the set is hashable and immutable.
        for name in ("targets", "retained", "context_pairs", "templates"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self.validate()

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise :class:`ConceptError` if the set cannot give a meaningful erasure."""
        if not self.targets:
            raise ConceptError("no target concept: write at least one concept to erase (one per line)")
        for t in self.targets:
            if not _norm(t.concept):
                raise ConceptError("a target concept is empty; remove the blank entry or name the concept")
        target_names = {_norm(t.concept) for t in self.targets}
        for r in self.retained:
            if not _norm(r.concept):
                raise ConceptError("a retained concept is empty; remove the blank entry or name the concept")
            if _norm(r.concept) in target_names:
                raise ConceptError(
                    f"'{r.concept}' is both erased and retained; remove it from one of the two lists"
                )
            _check_weight(r.weight, f"retained concept '{r.concept}'")
        for p in self.context_pairs:
            if _norm(p.concept) in target_names:
                raise ConceptError(f"context pair keeps '{p.concept}', which is also a target; remove one")
            if _norm(p.concept) not in _norm(p.context).split(" ") and _norm(p.concept) not in _norm(p.context):
                raise ConceptError(
                    f"context pair '{p.context} => {p.concept}': '{p.concept}' does not occur in '{p.context}'"
                )
            _check_weight(p.weight, f"context pair '{p.context} => {p.concept}'")
        if not self.templates:
            raise ConceptError("no prompt template; use '{}' to encode each concept on its own")
        for template in self.templates:
            if template.count("{}") != 1:
                raise ConceptError(f"template '{template}' must contain '{{}}' exactly once (where the concept goes)")

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_text(
        cls,
        targets: str,
        retained: str = "",
        care: str = "",
        contexts: str = "",
        templates: str = "",
        retain_weight: float = DEFAULT_RETAIN_WEIGHT,
        care_weight: float = DEFAULT_CARE_WEIGHT,
    ) -> ConceptSet:
        """Parse the multiline text format described in the module docstring."""
        _check_weight(retain_weight, "the retain weight")
        _check_weight(care_weight, "the CARE weight")
        target_list = []
        for entry in _entries(targets):
            concept, _, anchor = entry.partition("->")
            target_list.append(Target(concept.strip(), anchor.strip()))
        retained_list = [_parse_retained(e, retain_weight, False) for e in _entries(retained)]
        retained_list += [_parse_retained(e, care_weight, True) for e in _entries(care)]
        pairs = []
        for entry in _entries(contexts, split_commas=False):
            context, sep, concept = entry.partition("=>")
            if not sep:
                raise ConceptError(f"context line '{entry}' needs the form 'a boat on water => water'")
            pairs.append(ContextPair(context.strip(), concept.strip(), care_weight))
        template_list = tuple(_entries(templates, split_commas=False)) or DEFAULT_TEMPLATES
        return cls(tuple(target_list), _dedupe(retained_list), tuple(pairs), template_list)

    def merged(self, other: ConceptSet) -> ConceptSet:
        """Union of two sets; a retained concept present in both keeps the larger weight (and CARE tag)."""
        targets = list(dict.fromkeys(self.targets + other.targets))
        templates = tuple(dict.fromkeys(self.templates + other.templates))
        pairs = tuple(dict.fromkeys(self.context_pairs + other.context_pairs))
        return ConceptSet(tuple(targets), _dedupe(self.retained + other.retained), pairs, templates)

    def with_retained(self, concepts: Iterable[str], weight: float, care: bool = True) -> ConceptSet:
        """A copy with ``concepts`` added to the retained set (targets among them are skipped)."""
        target_names = {_norm(t.concept) for t in self.targets}
        extra = tuple(Retained(c, weight, care) for c in concepts if _norm(c) and _norm(c) not in target_names)
        return replace(self, retained=_dedupe(self.retained + extra))

    # ----------------------------------------------------------------------------- (de)serialising
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ConceptSet:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConceptError(f"concept set JSON is not valid JSON: {err}") from err
        if not isinstance(data, dict) or "targets" not in data:
            raise ConceptError("concept set JSON must be an object with a 'targets' list")
        try:
            return cls(
                tuple(Target(**t) if isinstance(t, dict) else Target(str(t)) for t in data["targets"]),
                tuple(Retained(**r) if isinstance(r, dict) else Retained(str(r)) for r in data.get("retained", ())),
                tuple(ContextPair(**p) for p in data.get("context_pairs", ())),
                tuple(data.get("templates", DEFAULT_TEMPLATES)),
            )
        except TypeError as err:
            raise ConceptError(f"concept set JSON has an unexpected field: {err}") from err

    def summary(self) -> str:
        care = sum(r.care for r in self.retained)
        return (
            f"{len(self.targets)} target(s), {len(self.retained)} retained ({care} CARE), "
            f"{len(self.context_pairs)} context pair(s), {len(self.templates)} template(s)"
        )


def _check_weight(weight: float, what: str) -> None:
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConceptError(f"{what} has weight {weight!r}; weights must be finite and >= 0")


def _entries(text: str, split_commas: bool = True) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        parts = line.split(",") if split_commas else [line]
        out += [p.strip() for p in parts if p.strip()]
    return out


def _parse_retained(entry: str, default_weight: float, care: bool) -> Retained:
    concept, sep, weight_text = entry.rpartition(":")
    if not sep:
        return Retained(entry.strip(), default_weight, care)
    try:
        weight = float(weight_text)
    except ValueError as err:
        raise ConceptError(f"retained line '{entry}': '{weight_text.strip()}' is not a number") from err
    _check_weight(weight, f"retained concept '{concept.strip()}'")
    return Retained(concept.strip(), weight, care)


def _dedupe(retained: Iterable[Retained]) -> tuple[Retained, ...]:
    """One entry per concept: the largest weight wins, CARE if any copy is CARE."""
    best: dict[str, Retained] = {}
    for r in retained:
        key = _norm(r.concept)
        if key in best:
            old = best[key]
            r = Retained(old.concept, max(old.weight, r.weight), old.care or r.care)
        best[key] = r
    return tuple(best.values())
