"""CARE score: does the model still draw a concept when asked for it?

    CARE(c) = (1 / N) * #{ images generated for c's prompt that the classifier assigns to c }

computed for the original and the edited model on the same seeds; the *loss* ``CARE_O - CARE_E`` is the
damage a person would see. For a target it should be large, for CARE neighbours and unrelated concepts
close to 0.

A :class:`Classifier` says, per image, whether a concept is present. Two kinds ship:

* the toy world's detector (:func:`erasure.audit.toy.detector_classifier`);
* :class:`ZeroShotClassifier` -- CLIP zero-shot over a label list (Radford et al. 2021): an image is
  assigned the label whose text embedding ``"a photo of {label}"`` has the highest cosine similarity with
  the image embedding. Build one from local open_clip or transformers weights with
  :func:`zero_shot_from_open_clip` / :func:`zero_shot_from_transformers` (optional extras, imported only
  there; nothing is downloaded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_LABEL_TEMPLATE = "a photo of {}"
# OpenAI CLIP image normalisation (Radford et al. 2021, released preprocessing).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_IMAGE_SIZE = 224


@runtime_checkable
class Classifier(Protocol):
    """``present(images [N, 3, H, W] in [0, 1], concept) -> bool [N]``; ``knows(concept)`` says whether
    the classifier can judge ``concept`` at all (unknown concepts get no CARE score)."""

    def knows(self, concept: str) -> bool: ...

    def present(self, images: torch.Tensor, concept: str) -> np.ndarray: ...


def care_score(classifier: Classifier, images: torch.Tensor, concept: str) -> float | None:
    """Fraction of ``images`` in which ``classifier`` finds ``concept`` (``None`` if it cannot judge it)."""
    if not classifier.knows(concept) or images.shape[0] == 0:
        return None
    return float(np.mean(classifier.present(images, concept)))


def as_nchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[N, H, W, C]`` or ``[N, C, H, W]`` -> float ``[N, 3, H, W]``."""
    if images.ndim != 4:
        raise ValueError(f"expected a batch of images [N, ...], got shape {tuple(images.shape)}")
    if images.shape[1] not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
        images = images.permute(0, 3, 1, 2)
    images = images[:, :3].float()
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class ZeroShotClassifier:
    """CLIP zero-shot classification over ``labels`` (module docstring).

    encode_image: ``[N, 3, S, S]`` normalised pixels -> ``[N, D]`` embeddings.
    encode_text:  list of strings -> ``[L, D]`` embeddings.
    """

    def __init__(
        self,
        encode_image: Callable[[torch.Tensor], torch.Tensor],
        encode_text: Callable[[list[str]], torch.Tensor],
        labels: Sequence[str],
        template: str = DEFAULT_LABEL_TEMPLATE,
        image_size: int = CLIP_IMAGE_SIZE,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        labels = [str(label).strip() for label in labels if str(label).strip()]
        if len(labels) < 2:
            raise ValueError("zero-shot classification needs at least two labels to choose between")
        self.labels = labels
        self.index = {label.lower(): i for i, label in enumerate(labels)}
        self.encode_image = encode_image
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            self.text = F.normalize(encode_text([template.format(label) for label in labels]).float(), dim=-1)

    def knows(self, concept: str) -> bool:
        return concept.strip().lower() in self.index

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(as_nchw(images), size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        return (x.clamp(0, 1) - self.mean) / self.std

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, L]`` softmax over labels of the cosine similarities (the temperature does not change argmax)."""
        feats = F.normalize(self.encode_image(self.preprocess(images)).float(), dim=-1)
        return torch.softmax(feats @ self.text.T, dim=-1)

    def assign(self, images: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self.probabilities(images).argmax(-1).tolist()]

    def present(self, images: torch.Tensor, concept: str) -> np.ndarray:
        if not self.knows(concept):
            raise KeyError(f"'{concept}' is not one of the zero-shot labels ({', '.join(self.labels)})")
        return (self.probabilities(images).argmax(-1) == self.index[concept.strip().lower()]).numpy()


def zero_shot_from_transformers(
    model_dir: str | Path, labels: Sequence[str], template: str = DEFAULT_LABEL_TEMPLATE
) -> ZeroShotClassifier:
    """A zero-shot classifier from a local Hugging Face CLIP folder (``config.json``, weights, tokenizer)."""
    try:
        from transformers import CLIPModel, CLIPTokenizer
    except ImportError as err:
        raise ImportError("CLIP scoring with transformers needs `pip install transformers`") from err
    model = CLIPModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    return transformers_classifier(
        model, lambda texts: tokenizer(texts, padding=True, return_tensors="pt")["input_ids"], labels, template
    )


def transformers_classifier(
    model: torch.nn.Module,
    tokenize: Callable[[list[str]], torch.Tensor],
    labels: Sequence[str],
    template: str = DEFAULT_LABEL_TEMPLATE,
) -> ZeroShotClassifier:
    """Wrap a transformers ``CLIPModel`` (any size, e.g. a tiny random one in tests) and a tokenizer."""

    def features(out: object) -> torch.Tensor:  # transformers >= 5 may return an output object
        return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]

    size = int(model.config.vision_config.image_size)
    return ZeroShotClassifier(
        lambda x: features(model.get_image_features(pixel_values=x)),
        lambda texts: features(model.get_text_features(input_ids=tokenize(texts))),
        labels,
        template,
        image_size=size,
    )


def zero_shot_from_open_clip(
    model_name: str, weights: str | Path, labels: Sequence[str], template: str = DEFAULT_LABEL_TEMPLATE
) -> ZeroShotClassifier:
    """A zero-shot classifier from open_clip with a local weights file (``pretrained=<path>``)."""
    try:
        import open_clip
    except ImportError as err:
        raise ImportError("CLIP scoring with open_clip needs `pip install open_clip_torch`") from err
    if not Path(weights).is_file():
        raise FileNotFoundError(f"no CLIP weights at '{weights}' (local files only)")
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(weights))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ZeroShotClassifier(
        model.encode_image, lambda texts: model.encode_text(tokenizer(texts)), labels, template, size
    )
