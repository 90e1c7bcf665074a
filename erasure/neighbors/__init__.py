"""Neighbours of a concept: vocabularies, the collateral-risk scan and CARE-set suggestions.

* :mod:`.vocab`    shipped concept lists and users' own lists;
* :mod:`.embed`    encoded vocabularies, cached per text-encoder fingerprint;
* :mod:`.relation` alignment/residual to the targets, near-synonym and containment flags;
* :mod:`.risk`     rank a vocabulary by predicted drift at the edit sites (10,000 concepts in well under 1 s);
* :mod:`.suggest`  text- and risk-side CARE suggestions; :mod:`.image` image-side suggestion;
* :mod:`.pipeline` one call per use case (CLI and ComfyUI nodes call these).

See ``docs/neighbors.md`` for the procedures and their maths.
"""

from .embed import FingerprintedEncoder, VocabularyEmbedding, embed_vocabulary, encoder_fingerprint, state_fingerprint
from .image import detections_from_classifier, suggest_from_detections, suggest_from_images, top_m_detections
from .pipeline import NeighborSettings, naive_edit, risk_scan, suggest_care
from .relation import Relation, relate
from .risk import RiskIndex, RiskReport, scan
from .suggest import Suggestion, suggest_from_predictions, suggest_from_risk, suggest_from_text
from .vocab import Vocabulary, load_vocabulary, load_vocabulary_file, parse_vocabulary, resolve_vocabulary

__all__ = [
    "FingerprintedEncoder", "NeighborSettings", "Relation", "RiskIndex", "RiskReport", "Suggestion", "Vocabulary",
    "VocabularyEmbedding", "detections_from_classifier", "embed_vocabulary", "encoder_fingerprint",
    "load_vocabulary", "load_vocabulary_file", "naive_edit", "parse_vocabulary", "relate", "resolve_vocabulary",
    "risk_scan", "scan", "state_fingerprint", "suggest_care", "suggest_from_detections", "suggest_from_images",
    "suggest_from_predictions", "suggest_from_risk", "suggest_from_text", "top_m_detections",
]
