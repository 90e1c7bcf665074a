"""Neighbour nodes (ComfyUI V3 schema): collateral-risk scan and CARE-set suggestions.

Thin glue: ComfyUI objects in, :mod:`erasure.neighbors` for every computation, text out. Each node's
``care`` output is one concept per line, ready to wire into the ``care`` input of *CARE Concept Set*
(convert that widget to an input), so the loop "erase -> see risk -> protect -> re-erase" stays in the graph.

* ``CARERiskScan``         -- rank a vocabulary by the drift an erasure causes (targets and near-synonyms apart);
* ``CARESuggestCareSet``   -- a CARE set from the text encoder (``text``) or from the naive erasure's damage (``risk``);
* ``CARESuggestFromImages`` -- a CARE set from images of the target sampled upstream, scored by a local CLIP.

Encoded vocabularies are cached on disk per CLIP weights (a fingerprint hashed once per loaded CLIP).
"""

from __future__ import annotations

from comfy_api.latest import io, ui

from . import adapters
from .engine import concepts as _concepts
from .engine import engine_module

CATEGORY = "CARE erasure/neighbours"
Concepts = io.Custom("CARE_CONCEPTS")
Erasure = io.Custom("CARE_ERASURE")
ALL = "all"
EXTRA_ONLY = "extra concepts only"
_FINGERPRINTS: dict[tuple, str] = {}


def _nb():
    return engine_module("neighbors")


def _vocab_choices() -> list[str]:
    return [ALL, *engine_module("neighbors.vocab").shipped_categories(), EXTRA_ONLY]


def _vocabulary(choice: str, extra: str):
    nb = _nb()
    mine = nb.parse_vocabulary(extra or "")
    if choice == EXTRA_ONLY:
        if not len(mine):
            raise ValueError("the vocabulary is 'extra concepts only' but no extra concept was written")
        return mine
    base = nb.load_vocabulary(None if choice == ALL else [choice])
    return base.merged(mine)


def _encoder(clip):
    """The CLIP as an engine encoder with a fingerprint of its weights and patches (so its vocabulary caches)."""
    nb = _nb()
    encoder = adapters.ComfyTextEncoder(clip)
    inner = getattr(clip, "cond_stage_model", None)
    if inner is None or not hasattr(inner, "state_dict"):
        return encoder  # nothing to fingerprint: works without a cache
    patches = str(getattr(getattr(clip, "patcher", None), "patches_uuid", ""))
    layer = str(getattr(clip, "layer_idx", None))  # "CLIP Set Last Layer" changes the vectors, not the weights
    key = (id(inner), patches, layer)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = nb.state_fingerprint(inner.state_dict(), f"{type(inner).__name__}|{patches}|{layer}")
    return nb.FingerprintedEncoder(encoder, _FINGERPRINTS[key])


def _sites(model, choice: str = "auto"):
    family, sites = adapters.model_edit_sites(model, choice, adapters.patched_weight_fn(model))
    return family, sites


def _vocab_inputs() -> list:
    return [
        io.Combo.Input(
            "vocabulary", options=_vocab_choices(), default=ALL,
            tooltip="Which shipped concept list to search (objects, scenes, people, animals, styles, materials, "
                    "actions, or all ~1,000), or only your extra concepts.",
        ),
        io.String.Input(
            "extra_concepts", multiline=True, default="", optional=True, placeholder="harbour\nfishing net",
            tooltip="Your own concepts, one per line (commas also separate), added to the chosen list.",
        ),
        io.String.Input(
            "template", default="{}",
            tooltip="Prompt template each vocabulary concept is written into; '{}' is the concept. Use the "
                    "same templates as your concept set for comparable numbers.",
        ),
    ]


class CARERiskScan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CARERiskScan",
            display_name="CARE Collateral Risk Scan",
            category=CATEGORY,
            description=(
                "Ranks every concept of a vocabulary by how much the erasure moves it at the edited layers "
                "(output drift |dW r| / |W r|), so you see what it damages before sampling. The targets and their "
                "near-synonyms are listed apart: they are meant to change. 10,000 concepts take well under a "
                "second once encoded (encodings are cached per CLIP)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The MODEL the erasure was made for (the original, not the erased one)."),
                io.Clip.Input("clip", tooltip="The CLIP loaded with this MODEL: concepts are encoded as your prompts are."),
                Erasure.Input("erasure", tooltip="The erasure from CARE Erase Concepts."),
                *_vocab_inputs(),
                io.Int.Input("top_k", default=5, min=1, max=100,
                             tooltip="How many of the most damaged concepts go to the 'care' output."),
            ],
            outputs=[
                io.String.Output(display_name="care", tooltip="The top_k most damaged concepts, one per line: wire "
                                 "into CARE Concept Set's 'care' input to protect them and erase again."),
                io.String.Output(display_name="report", tooltip="The ranked scan as a text table."),
                io.String.Output(display_name="json", tooltip="The whole scan as JSON (scores, exclusions, timings)."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, erasure, vocabulary, template, top_k, extra_concepts="") -> io.NodeOutput:
        nb = _nb()
        concepts = _concepts.ConceptSet.from_json(erasure.delta.metadata["concepts"])
        _, sites = _sites(model, erasure.delta.metadata.get("sites", "auto"))
        settings = nb.NeighborSettings(template=template)
        report = nb.risk_scan(sites, _encoder(clip), _vocabulary(vocabulary, extra_concepts), erasure.delta.updates,
                              concepts, settings)
        table = report.as_table(max(20, top_k))
        return io.NodeOutput(report.care_text(top_k), table, report.to_json(), ui=ui.PreviewText(table))


class CARESuggestCareSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CARESuggestCareSet",
            display_name="CARE Suggest CARE Set",
            category=CATEGORY,
            description=(
                "Suggests which benign concepts to protect (the CARE set) for the concept set's targets. "
                "'text': the target's neighbours in the text encoder, near-synonyms and unrelated concepts removed. "
                "'risk': the concepts a plain erasure of the targets would damage most. Near-synonyms are returned "
                "separately: erase them too rather than protecting them."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion MODEL to erase from (used by the 'risk' method)."),
                io.Clip.Input("clip", tooltip="The CLIP loaded with this MODEL."),
                Concepts.Input("concepts", tooltip="The concept set whose targets need a CARE set."),
                io.Combo.Input("method", options=["risk", "text"], default="risk",
                               tooltip="'risk': ranked by the damage a plain erasure would do (model-internal). "
                                       "'text': ranked by closeness in the text encoder's space."),
                *_vocab_inputs(),
                io.Int.Input("top_k", default=5, min=1, max=50, tooltip="At most this many suggestions."),
                io.Float.Input("synonym_residual", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Concepts closer to a target than this residual (sine of the angle) count as "
                                       "near-synonyms: flagged for erasure, never suggested."),
                io.Float.Input("related_z", default=3.0, min=0.0, max=20.0, step=0.1,
                               tooltip="How exceptional (robust z-score over the vocabulary) a concept's score must be "
                                       "to count as related; lower suggests more."),
            ],
            outputs=[
                io.String.Output(display_name="care", tooltip="Suggested CARE concepts, one per line: wire into "
                                 "CARE Concept Set's 'care' input."),
                io.String.Output(display_name="near_synonyms", tooltip="Flagged near-synonyms, one per line: "
                                 "candidates to add to the targets."),
                io.String.Output(display_name="report", tooltip="Suggestions and flags as a text table."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, clip, concepts, method, vocabulary, template, top_k, synonym_residual, related_z,
                extra_concepts="") -> io.NodeOutput:
        nb = _nb()
        _, sites = _sites(model)
        settings = nb.NeighborSettings(template=template, synonym_residual=synonym_residual, related_z=related_z,
                                       top_k=top_k)
        s = nb.suggest_care(method, sites, _encoder(clip), _vocabulary(vocabulary, extra_concepts), concepts, settings)
        table = s.as_table()
        return io.NodeOutput(s.care_text(), s.erase_text(), table, ui=ui.PreviewText(table))


class CARESuggestFromImages(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CARESuggestFromImages",
            display_name="CARE Suggest CARE Set From Images",
            category=CATEGORY,
            description=(
                "Suggests a CARE set from what the model draws with the target: sample a batch of the target "
                "prompt upstream (e.g. 'a boat', 16-32 seeds), and a local CLIP finds which vocabulary concepts "
                "appear; those seen in enough images are suggested, the targets and their words left out."
            ),
            inputs=[
                io.Image.Input("images", tooltip="A batch of images sampled from the target prompt."),
                io.String.Input("targets", default="", placeholder="boat",
                                tooltip="The erased concepts (one per line): never suggested themselves."),
                io.String.Input("clip_classifier", default="",
                                tooltip="Folder of a local Hugging Face CLIP model (config, weights, tokenizer) "
                                        "used to recognise concepts in the images."),
                *_vocab_inputs()[:2],
                io.Int.Input("labels_per_image", default=3, min=1, max=20,
                             tooltip="A concept counts as present in an image when it is among that image's "
                                     "highest-scoring concepts."),
                io.Float.Input("min_frequency", default=0.25, min=0.01, max=1.0, step=0.01,
                               tooltip="Fraction of the images a concept must appear in to be suggested."),
                io.Int.Input("top_k", default=5, min=1, max=50, tooltip="At most this many suggestions."),
                io.String.Input("exclude", multiline=True, default="", optional=True,
                                tooltip="Concepts never to suggest (e.g. ones that are not benign), one per line."),
                io.Image.Input("baseline_images", optional=True,
                               tooltip="Optional: the same seeds sampled from an empty prompt. Then a concept must "
                                       "also appear at least twice as often with the target as without it "
                                       "(drops what the model draws everywhere)."),
            ],
            outputs=[
                io.String.Output(display_name="care", tooltip="Suggested CARE concepts, one per line."),
                io.String.Output(display_name="report", tooltip="Suggestions with their frequencies as a text table."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, images, targets, clip_classifier, vocabulary, labels_per_image, min_frequency, top_k,
                extra_concepts="", exclude="", baseline_images=None) -> io.NodeOutput:
        nb = _nb()
        if not clip_classifier.strip():
            raise ValueError("CARE Suggest From Images needs a local CLIP folder in 'clip_classifier'")
        vocab = _vocabulary(vocabulary, extra_concepts)
        classifier = engine_module("audit.care").zero_shot_from_transformers(clip_classifier.strip(), list(vocab.concepts))
        detections = nb.top_m_detections(classifier.probabilities(images), classifier.labels, labels_per_image)
        baseline = None
        if baseline_images is not None:
            baseline = nb.top_m_detections(classifier.probabilities(baseline_images), classifier.labels, labels_per_image)
        target_list = [t for t in nb.parse_vocabulary(targets).concepts]
        if not target_list:
            raise ValueError("write the erased target(s) in 'targets' so they are not suggested")
        s = nb.suggest_from_detections(detections, target_list, min_frequency, top_k,
                                       exclude=nb.parse_vocabulary(exclude or "").concepts,
                                       categories=dict(zip(vocab.concepts, vocab.categories)), baseline=baseline)
        table = s.as_table()
        return io.NodeOutput(s.care_text(), table, ui=ui.PreviewText(table))


NODES: list[type[io.ComfyNode]] = [CARERiskScan, CARESuggestCareSet, CARESuggestFromImages]
