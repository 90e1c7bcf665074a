"""Neighbours: vocabularies, the embedding cache, relations/flags, text and image CARE suggestions."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from erasure.neighbors import (
    FingerprintedEncoder,
    Vocabulary,
    embed_vocabulary,
    encoder_fingerprint,
    load_vocabulary,
    parse_vocabulary,
    relate,
    state_fingerprint,
    suggest_from_images,
    suggest_from_text,
    top_m_detections,
)
from erasure.neighbors.vocab import VocabularyError, load_vocabulary_file, resolve_vocabulary, shipped_categories
from erasure.vectors import EncodedPrompt
from tests.fakes import WordHashEncoder

CATEGORIES = {"objects", "scenes", "people", "animals", "styles", "materials", "actions"}


class VectorEncoder:
    """Words have given vectors (others: hashed); rows are the words' vectors, then EOS = their mean."""

    def __init__(self, vectors: dict[str, torch.Tensor], width: int, fingerprint: str | None = None) -> None:
        self.vectors, self._width, self._fp, self.calls = vectors, width, fingerprint, 0
        self.fallback = WordHashEncoder(width)

    @property
    def width(self) -> int:
        return self._width

    def fingerprint(self) -> str | None:
        return self._fp

    def encode(self, prompts: Sequence[str], phrases: Sequence[str]) -> list[EncodedPrompt]:
        self.calls += len(prompts)
        out = []
        for prompt in prompts:
            words = prompt.split()
            rows = [self.vectors.get(w, self.fallback.embed(w)) for w in words]
            rows.append(torch.stack(rows).mean(0) if rows else self.fallback.embed("<eos>"))
            out.append(EncodedPrompt(torch.stack(rows), torch.arange(len(words)), torch.tensor([len(words)])))
        return out


# ------------------------------------------------------------------------------------------ vocabulary
def test_shipped_vocabulary_has_every_category_and_a_thousand_concepts() -> None:
    vocab = load_vocabulary()
    assert CATEGORIES <= set(shipped_categories())
    assert len(vocab) >= 1000
    assert len(set(vocab.concepts)) == len(vocab)  # de-duplicated
    counts = {c: vocab.categories.count(c) for c in CATEGORIES}
    assert min(counts.values()) >= 100, counts


def test_user_list_format_headers_comments_commas_and_dedupe(tmp_path) -> None:
    text = "# my list\nBoat,  Sea Shore\n[places]\nharbour # comment\nboat\n\n"
    vocab = parse_vocabulary(text)
    assert vocab.concepts == ("boat", "sea shore", "harbour")
    assert vocab.categories == ("user", "user", "places")
    path = tmp_path / "mine.txt"
    path.write_text("water\nsand\n")
    assert load_vocabulary_file(path).categories == ("mine", "mine")
    assert resolve_vocabulary(str(path)).concepts == ("water", "sand")
    assert resolve_vocabulary("animals").categories[0] == "animals"
    with pytest.raises(VocabularyError, match="unknown vocabulary categories"):
        load_vocabulary(["nonsense"])
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary_file(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------ cache
def test_cache_reuses_rows_and_encodes_only_new_concepts(tmp_path) -> None:
    enc = VectorEncoder({}, 16, fingerprint="weights-a")
    first, s1 = embed_vocabulary(enc, ["boat", "water", "sea shore"], cache_dir=tmp_path)
    assert (s1["encoded"], s1["cached"], enc.calls) == (3, 0, 3)
    second, s2 = embed_vocabulary(enc, ["water", "boat", "sand"], cache_dir=tmp_path)
    assert (s2["encoded"], s2["cached"], enc.calls) == (1, 2, 4)
    assert second.concepts == ("water", "boat", "sand")
    assert torch.equal(second.subset(["boat"]).rows, first.subset(["boat"]).rows)
    # sea shore: two words + EOS = 3 rows in the default concept_to_eos scope
    assert int(first.offsets[3] - first.offsets[2]) == 3


def test_cache_is_keyed_by_fingerprint_and_skipped_without_one(tmp_path) -> None:
    embed_vocabulary(VectorEncoder({}, 16, "weights-a"), ["boat"], cache_dir=tmp_path)
    other = VectorEncoder({}, 16, "weights-b")
    _, stats = embed_vocabulary(other, ["boat"], cache_dir=tmp_path)
    assert stats["encoded"] == 1  # a different encoder never reads another's vectors
    bare = WordHashEncoder(16)
    assert encoder_fingerprint(bare) is None
    _, stats = embed_vocabulary(bare, ["boat"], cache_dir=tmp_path / "none")
    assert stats["cache_file"] is None and not (tmp_path / "none").exists()
    assert encoder_fingerprint(FingerprintedEncoder(bare, "x")) == "x"


def test_damaged_cache_file_is_rewritten(tmp_path) -> None:
    enc = VectorEncoder({}, 16, "weights-a")
    _, stats = embed_vocabulary(enc, ["boat"], cache_dir=tmp_path)
    with open(stats["cache_file"], "wb") as f:
        f.write(b"not a safetensors file")
    emb, stats = embed_vocabulary(enc, ["boat"], cache_dir=tmp_path)
    assert stats["encoded"] == 1 and emb.rows.shape == (2, 16)


def test_state_fingerprint_follows_weights() -> None:
    a = {"w": torch.ones(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)}
    b = {"w": torch.ones(3, 2), "b": torch.zeros(2, dtype=torch.bfloat16)}
    assert state_fingerprint(a) == state_fingerprint(b)
    b["w"][0, 0] = 1.0001
    assert state_fingerprint(a) != state_fingerprint(b)
    assert state_fingerprint(a, "vocab1") != state_fingerprint(a, "vocab2")


# ------------------------------------------------------------------------------------------ relations
def _world(width: int = 24, unrelated: int = 60, seed: int = 0) -> tuple[dict[str, torch.Tensor], list[str]]:
    """boat; ship (near-synonym); water, harbour (related: half along boat); many random concepts."""
    g = torch.Generator().manual_seed(seed)
    boat = torch.randn(width, generator=g) * 3
    vec = {"boat": boat, "ship": boat + 0.3 * torch.randn(width, generator=g)}
    vec["water"] = 0.8 * boat + 2.5 * torch.randn(width, generator=g)
    vec["harbour"] = 0.7 * boat + 2.5 * torch.randn(width, generator=g)
    names = [f"thing{i}" for i in range(unrelated)]
    for n in names:
        vec[n] = 3 * torch.randn(width, generator=g)
    return vec, ["ship", "water", "harbour", "sailing boat", *names]


def _prepared(vec: dict[str, torch.Tensor], concepts: list[str], targets: list[str]):
    enc = VectorEncoder(vec, next(iter(vec.values())).shape[0])
    emb, _ = embed_vocabulary(enc, concepts, use_cache=False)
    tgt, _ = embed_vocabulary(enc, targets, use_cache=False)
    return relate(emb.concepts, emb.pooled(), targets, tgt.pooled())


def test_relation_flags_near_synonyms_and_containment() -> None:
    vec, concepts = _world()
    rel = _prepared(vec, concepts, ["boat"])
    assert rel.near_synonym[concepts.index("ship")]
    assert rel.contains_target[concepts.index("sailing boat")]
    assert not rel.near_synonym[concepts.index("water")]
    assert rel.residual[concepts.index("ship")] < rel.residual[concepts.index("water")] < 1.0
    pos = rel.alignment > 0
    assert torch.allclose(rel.alignment[pos].pow(2) + rel.residual[pos].pow(2), torch.ones(int(pos.sum()), dtype=torch.float64))
    assert (rel.residual[~pos] == 1).all()


def test_text_suggestion_keeps_related_drops_synonyms_and_unrelated() -> None:
    vec, concepts = _world()
    rel = _prepared(vec, concepts, ["boat"])
    s = suggest_from_text(concepts, ["x"] * len(concepts), rel, ["boat"], top_k=5)
    assert set(s.concepts) == {"water", "harbour"}  # only the two related concepts pass the z-score cut
    flagged = {f.concept: f.reason for f in s.flagged}
    assert flagged == {"ship": "near-synonym", "sailing boat": "contains target"}
    assert s.erase_text() == "ship"
    assert s.care_text().splitlines() == s.concepts
    assert "flagged" in s.as_table()


def test_text_suggestion_top_k_and_thresholds() -> None:
    vec, concepts = _world()
    rel = _prepared(vec, concepts, ["boat"])
    assert len(suggest_from_text(concepts, ["x"] * len(concepts), rel, ["boat"], top_k=1).concepts) == 1
    strict = suggest_from_text(concepts, ["x"] * len(concepts), rel, ["boat"], related_z=1e6)
    assert strict.concepts == []


# ------------------------------------------------------------------------------------------ images
def test_image_suggestion_keeps_frequent_benign_concepts() -> None:
    n = 20
    calls = []

    def generate(prompts, seeds):  # noqa: ANN001, ANN202
        calls.append(prompts[0])
        assert list(seeds) == list(range(7, 7 + n)) and len(set(prompts)) == 1
        offset = 0 if prompts[0] == "a boat" else 100  # baseline images get other indices
        return (torch.arange(n, dtype=torch.float32) + offset)[:, None, None, None].expand(n, 3, 2, 2)

    def detect(images):  # noqa: ANN001, ANN202
        i = images[:, 0, 0, 0].long().numpy()
        boat, base = i < 100, i >= 100
        j = i % 100
        return {
            "boat": boat, "water": boat & (j < 18) | base & (j < 2), "sand": boat & (j < 10),
            "sky": (j < 12),  # as common without the boat: not tied to it (lift 1)
            "gull": boat & (j < 2), "ship": boat & (j < 15), "boat trailer": boat & (j < 10), "weapon": boat & (j < 12),
        }

    s = suggest_from_images(generate, detect, ["boat"], templates=("a {}",), n_images=n, seed=7,
                            min_frequency=0.25, exclude=["weapon"], flags={"ship": "near-synonym"})
    assert calls == ["", "a boat"]
    assert s.concepts == ["water", "sand"]  # sky: no lift; gull: too rare; weapon excluded; boat is the target
    assert s.suggested[0].score == pytest.approx(0.9)
    assert s.stats["lifts"]["water"] == pytest.approx((19 / 22) / (3 / 22))
    assert {f.concept: f.reason for f in s.flagged} == {"ship": "near-synonym", "boat trailer": "contains target"}
    without = suggest_from_images(generate, detect, ["boat"], templates=("a {}",), n_images=n, seed=7,
                                  baseline_prompt=None, exclude=["weapon"], flags={"ship": "near-synonym"})
    assert without.concepts == ["water", "sky", "sand"]  # frequency only: the ubiquitous sky comes back


def test_top_m_detections() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.8, 0.7]])
    det = top_m_detections(scores, ["a", "b", "c"], top_m=2)
    assert det["a"].tolist() == [True, False] and det["c"].tolist() == [True, True]
    with pytest.raises(ValueError):
        top_m_detections(scores, ["a", "b"], top_m=1)


def test_vocabulary_helpers() -> None:
    v = Vocabulary.from_pairs([("Boat", "objects"), ("water", "scenes")]).with_concepts(["sea", "boat"])
    assert v.concepts == ("boat", "water", "sea") and v.category_of("SEA") == "user"
    assert v.without(["water"]).concepts == ("boat", "sea")
    assert v.digest() != v.without(["water"]).digest()


def test_denoiser_method_uses_the_same_flags_on_predictions() -> None:
    from erasure.neighbors import suggest_from_predictions

    vec, concepts = _world(width=48)
    preds = torch.stack([vec.get(c, vec["boat"] * 0 + 3 * torch.ones(48)) for c in concepts])
    s = suggest_from_predictions(concepts, ["x"] * len(concepts), preds, ["boat"], vec["boat"][None], top_k=5)
    assert set(s.concepts) == {"water", "harbour"}
    assert "ship" in s.erase_text() and s.method == "denoiser"
