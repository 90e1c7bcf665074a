"""CARE score and classifiers: a colour classifier with a known answer, a tiny random CLIP (transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from erasure.audit import ImagePair, ZeroShotClassifier, care_score, run_audit
from erasure.audit.probes import Probe

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}


def solid(rgb, n=1, size=8) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(n, 3, size, size).clone()


def colour_classifier() -> ZeroShotClassifier:
    """Image embedding = mean RGB; text embedding = the named colour: a zero-shot classifier with a known answer."""
    return ZeroShotClassifier(
        encode_image=lambda x: x.mean(dim=(2, 3)),
        encode_text=lambda texts: torch.tensor([COLOURS[t.split()[-1]] for t in texts]),
        labels=list(COLOURS),
        image_size=8,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )


def test_zero_shot_assigns_known_answers() -> None:
    clf = colour_classifier()
    images = torch.cat([solid(COLOURS["red"], 3), solid(COLOURS["blue"], 1)])
    assert clf.assign(images) == ["red", "red", "red", "blue"]
    assert care_score(clf, images, "red") == pytest.approx(0.75)
    assert care_score(clf, images, "green") == 0.0
    assert care_score(clf, images, "purple") is None  # not a label: no score
    # ComfyUI's [N, H, W, C] layout gives the same answer
    assert clf.assign(images.permute(0, 2, 3, 1)) == clf.assign(images)


def test_zero_shot_needs_two_labels() -> None:
    with pytest.raises(ValueError, match="two labels"):
        ZeroShotClassifier(lambda x: x, lambda t: torch.zeros(len(t), 3), ["only"])


def test_run_audit_care_loss_for_erased_colour() -> None:
    """'red' images become blue after the 'erasure': CARE loss 1 for red, 0 for the untouched green."""
    clf = colour_classifier()
    probes = [Probe("red", "target", "red"), Probe("green", "care", "green")]
    images = {
        "red": ImagePair(solid(COLOURS["red"], 4), solid(COLOURS["blue"], 4)),
        "green": ImagePair(solid(COLOURS["green"], 4), solid(COLOURS["green"], 4)),
    }
    report = run_audit(probes, images=images, classifier=clf)
    assert report.row("red").care_loss == pytest.approx(1.0)
    assert report.row("green").care_loss == 0.0
    assert report.row("green").ssim == pytest.approx(1.0)


def tiny_clip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text = {
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": 16,
    }
    vision = {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
    }
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    return transformers.CLIPModel(config).eval()


def byte_tokenize(texts: list[str]) -> torch.Tensor:
    """A stand-in tokenizer: bytes mod 60, padded, with EOS (id 63) last (CLIP pools at the highest id)."""
    rows = [[b % 60 + 1 for b in t.encode()][:14] + [63] for t in texts]
    width = max(map(len, rows))
    return torch.tensor([r + [0] * (width - len(r)) for r in rows])


def test_tiny_random_clip_through_transformers_path() -> None:
    from erasure.audit.care import transformers_classifier

    model = tiny_clip()
    labels = ["boat", "water", "house"]
    clf = transformers_classifier(model, byte_tokenize, labels)
    images = torch.rand(5, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    probs = clf.probabilities(images)
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))
    # each image is assigned exactly one label, so the CARE scores over the label set add up to 1
    total = sum(care_score(clf, images, label) for label in labels)
    assert total == pytest.approx(1.0)
    # the same answer computed by hand from the model's own embeddings
    with torch.no_grad():
        img = model.get_image_features(pixel_values=clf.preprocess(images))
        txt = model.get_text_features(input_ids=byte_tokenize([f"a photo of {x}" for x in labels]))
        img = img if isinstance(img, torch.Tensor) else img.pooler_output
        txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
        expected = (torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).T).argmax(
            -1
        )
    assert clf.assign(images) == [labels[i] for i in expected.tolist()]
    assert np.array_equal(clf.present(images, "water"), (expected == 1).numpy())
