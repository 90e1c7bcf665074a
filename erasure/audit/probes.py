"""Probes: the prompts an audit measures, each tagged by what the erasure should do to it.

* ``target``    -- erased concepts: damage here is the point;
* ``care``      -- CARE neighbours (retained concepts that co-occur with a target): damage here is the
  collateral the project exists to avoid;
* ``unrelated`` -- everything else (general preservation concepts, extra prompts): should not move.

Prompt-list text format (one probe per line, ``#`` comments and blank lines ignored)::

    target: boat                # tag, colon, concept; the prompt is the template filled with it
    care: water | a calm lake   # optional ``| prompt`` gives the exact prompt (it should contain the concept)
    a red car                   # untagged: an unrelated probe, concept = prompt
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..concepts import ConceptSet

TARGET, CARE, UNRELATED = "target", "care", "unrelated"
TAGS: tuple[str, ...] = (TARGET, CARE, UNRELATED)
DEFAULT_TEMPLATE = "{}"


class ProbeError(ValueError):
    """A probe list a user must fix; the message says which line and how."""


@dataclass(frozen=True)
class Probe:
    """One audited prompt: ``concept`` names it in reports and is the phrase located in ``prompt``."""

    concept: str
    tag: str
    prompt: str

    def __post_init__(self) -> None:
        if self.tag not in TAGS:
            raise ProbeError(f"probe '{self.concept}' has tag '{self.tag}'; use one of {', '.join(TAGS)}")
        if not self.concept.strip():
            raise ProbeError("a probe has an empty concept")


def fill(template: str, concept: str) -> str:
    """``template`` with ``{}`` replaced by ``concept``, whitespace normalised (as the erase flow does)."""
    return " ".join(template.replace("{}", concept).split())


def probes_from_concepts(
    concepts: ConceptSet, unrelated: Iterable[str] = (), template: str | None = None
) -> list[Probe]:
    """Targets, then CARE-tagged retained concepts (``care``), then the other retained concepts and
    ``unrelated`` (``unrelated``), each group in its given order; prompts use ``template`` (default: the
    set's first template). Duplicates are dropped."""
    template = template or concepts.templates[0]
    out = [Probe(t.concept, TARGET, fill(template, t.concept)) for t in concepts.targets]
    out += [Probe(r.concept, CARE if r.care else UNRELATED, fill(template, r.concept)) for r in concepts.retained]
    out += [Probe(c, UNRELATED, fill(template, c)) for c in unrelated if c.strip()]
    return sorted(dedupe(out), key=lambda p: TAGS.index(p.tag))


def dedupe(probes: Iterable[Probe]) -> list[Probe]:
    """First probe per concept wins (a target listed again as unrelated stays a target)."""
    seen: dict[str, Probe] = {}
    for p in probes:
        seen.setdefault(p.concept.strip().lower(), p)
    return list(seen.values())


def parse_probes(text: str, template: str = DEFAULT_TEMPLATE) -> list[Probe]:
    """Parse the prompt-list format of the module docstring."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        tag, sep, rest = line.partition(":")
        if sep and tag.strip().lower() in TAGS:
            tag, body = tag.strip().lower(), rest.strip()
        else:
            tag, body = UNRELATED, line
        concept, bar, prompt = body.partition("|")
        concept, prompt = concept.strip(), prompt.strip()
        if not concept:
            raise ProbeError(f"line {number} ('{raw.strip()}') names no concept; write e.g. 'care: water'")
        out.append(Probe(concept, tag, prompt if bar and prompt else fill(template, concept)))
    if not out:
        raise ProbeError("the prompt list is empty; write one concept or prompt per line (e.g. 'target: boat')")
    return dedupe(out)


def by_tag(probes: Sequence[Probe]) -> dict[str, list[Probe]]:
    return {tag: [p for p in probes if p.tag == tag] for tag in TAGS}
