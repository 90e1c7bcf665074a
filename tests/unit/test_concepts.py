"""Concept sets: parsing, validation messages, merging, JSON."""

from __future__ import annotations

import pytest

from erasure.concepts import DEFAULT_CARE_WEIGHT, ConceptError, ConceptSet, ContextPair, Retained, Target


def test_parse_text_format() -> None:
    cs = ConceptSet.from_text(
        "boat -> ship\n# comment\nfish", retained="tree, car : 3", care="water",
        contexts="a boat on water => water", templates="a photo of {}\n{}",
    )
    assert cs.targets == (Target("boat", "ship"), Target("fish"))
    assert Retained("car", 3.0) in cs.retained and Retained("tree", 1.0) in cs.retained
    assert Retained("water", DEFAULT_CARE_WEIGHT, care=True) in cs.retained
    assert cs.context_pairs == (ContextPair("a boat on water", "water", DEFAULT_CARE_WEIGHT),)
    assert cs.templates == ("a photo of {}", "{}")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"targets": "  \n# nothing"}, "no target concept"),
        ({"targets": "boat", "retained": "Boat"}, "both erased and retained"),
        ({"targets": "boat", "care": "water : nan"}, "finite"),
        ({"targets": "boat", "retained": "water : much"}, "not a number"),
        ({"targets": "boat", "contexts": "a boat on water"}, "needs the form"),
        ({"targets": "boat", "contexts": "a boat on water => tree"}, "does not occur"),
        ({"targets": "boat", "templates": "a photo"}, "exactly once"),
        ({"targets": "boat", "retain_weight": -1.0}, ">= 0"),
    ],
)
def test_invalid_sets_are_explained(kwargs: dict, message: str) -> None:
    with pytest.raises(ConceptError, match=message):
        ConceptSet.from_text(**kwargs)


def test_merge_keeps_larger_weight_and_care_tag() -> None:
    a = ConceptSet.from_text("boat", retained="water : 1")
    b = ConceptSet.from_text("car", care="water : 4")
    merged = a.merged(b)
    assert [t.concept for t in merged.targets] == ["boat", "car"]
    assert merged.retained == (Retained("water", 4.0, care=True),)


def test_merge_rejects_a_concept_that_becomes_both() -> None:
    with pytest.raises(ConceptError, match="both erased and retained"):
        ConceptSet.from_text("boat", retained="water").merged(ConceptSet.from_text("water"))


def test_json_round_trip_and_errors() -> None:
    cs = ConceptSet.from_text("boat -> ship", care="water", contexts="a boat on water => water")
    assert ConceptSet.from_json(cs.to_json()) == cs
    assert ConceptSet.from_json('{"targets": ["boat"], "retained": ["water"]}').retained == (Retained("water"),)
    with pytest.raises(ConceptError, match="not valid JSON"):
        ConceptSet.from_json("{")
    with pytest.raises(ConceptError, match="'targets' list"):
        ConceptSet.from_json("[]")


def test_with_retained_skips_targets() -> None:
    cs = ConceptSet.from_text("boat").with_retained(["water", "boat", ""], weight=2.0)
    assert [r.concept for r in cs.retained] == ["water"]
