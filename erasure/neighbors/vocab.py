"""Vocabularies: the concepts a risk scan ranks and a CARE suggestion chooses from.

The project ships lists written for it under ``erasure/vocab/<category>.txt`` (objects, scenes, people,
animals, styles, materials, actions): one concept per line, ``#`` starts a comment, blank lines are
ignored. A user's own list uses the same format (commas also separate entries) and may name categories
with ``[category]`` header lines. Concepts are normalised (lower case, single spaces) and de-duplicated;
the first occurrence keeps its category.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

VOCAB_DIR = Path(__file__).resolve().parent.parent / "vocab"
"""Folder of the shipped lists (``<category>.txt``)."""
USER_CATEGORY = "user"
"""Category of entries from a user's list that names none."""


class VocabularyError(ValueError):
    """A vocabulary a user must fix (missing file, unknown category, empty list)."""


def normalise(concept: str) -> str:
    """Lower case, single spaces: the form concepts are compared and cached in."""
    return " ".join(concept.strip().lower().split())


@dataclass(frozen=True)
class Vocabulary:
    """Concepts with the category each came from (parallel tuples, in a fixed order)."""

    concepts: tuple[str, ...]
    categories: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.concepts) != len(self.categories):
            raise VocabularyError("every concept needs a category")

    def __len__(self) -> int:
        return len(self.concepts)

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Vocabulary:
        """De-duplicate normalised ``(concept, category)`` pairs; the first occurrence wins."""
        seen: dict[str, str] = {}
        for concept, category in pairs:
            key = normalise(concept)
            if key and key not in seen:
                seen[key] = category
        return cls(tuple(seen), tuple(seen.values()))

    def merged(self, other: Vocabulary) -> Vocabulary:
        return Vocabulary.from_pairs(list(zip(self.concepts, self.categories)) + list(zip(other.concepts, other.categories)))

    def with_concepts(self, concepts: Iterable[str], category: str = USER_CATEGORY) -> Vocabulary:
        return self.merged(Vocabulary.from_pairs((c, category) for c in concepts))

    def without(self, concepts: Iterable[str]) -> Vocabulary:
        drop = {normalise(c) for c in concepts}
        return Vocabulary.from_pairs((c, k) for c, k in zip(self.concepts, self.categories) if c not in drop)

    def digest(self) -> str:
        """SHA-256 of the concept list (order included): part of every cache key."""
        return hashlib.sha256("\n".join(self.concepts).encode()).hexdigest()

    def category_of(self, concept: str) -> str:
        return self.categories[self.concepts.index(normalise(concept))]


def shipped_categories() -> tuple[str, ...]:
    """Names of the shipped lists, sorted."""
    return tuple(sorted(p.stem for p in VOCAB_DIR.glob("*.txt")))


def parse_vocabulary(text: str, category: str = USER_CATEGORY) -> Vocabulary:
    """Parse the list format (module docstring); ``[name]`` lines switch the category."""
    pairs = []
    current = category
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("[") and line.endswith("]"):
            current = normalise(line[1:-1]) or category
            continue
        pairs += [(part, current) for part in line.split(",") if part.strip()]
    return Vocabulary.from_pairs(pairs)


def load_vocabulary(categories: Sequence[str] | None = None) -> Vocabulary:
    """The shipped vocabulary (every category, or the named ones in the given order)."""
    available = shipped_categories()
    chosen = available if categories is None or len(categories) == 0 else tuple(categories)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise VocabularyError(f"unknown vocabulary categories {unknown}; the shipped ones are {', '.join(available)}")
    out = Vocabulary((), ())
    for name in chosen:
        out = out.merged(parse_vocabulary((VOCAB_DIR / f"{name}.txt").read_text(encoding="utf-8"), name))
    return out


def load_vocabulary_file(path: str | Path, category: str | None = None) -> Vocabulary:
    """A user's list from a text file; its category defaults to the file name without extension."""
    path = Path(path)
    if not path.is_file():
        raise VocabularyError(f"vocabulary file {path} does not exist")
    vocab = parse_vocabulary(path.read_text(encoding="utf-8"), category or path.stem)
    if not len(vocab):
        raise VocabularyError(f"vocabulary file {path} has no concepts (one per line, '#' for comments)")
    return vocab


def resolve_vocabulary(spec: str) -> Vocabulary:
    """``"all"``/``""`` (every shipped list), ``"objects,scenes"`` (shipped categories) or a file path."""
    spec = spec.strip()
    if spec in ("", "all"):
        return load_vocabulary()
    if Path(spec).is_file():
        return load_vocabulary_file(spec)
    return load_vocabulary([s.strip() for s in spec.split(",") if s.strip()])
