"""Collateral-damage audit: drift at the edit sites, denoiser drift, paired-image fidelity and CARE
scores for probes tagged target / CARE / unrelated, gathered into a report with pictures.

Pure torch + numpy + scikit-image + PIL; the toy world and CLIP libraries are imported only by the
functions that need them.
"""

from .care import Classifier, ZeroShotClassifier, care_score
from .denoiser import Denoiser, SigmaDenoiser, denoiser_drift
from .drift import site_drift, updates_from_weights
from .fidelity import paired_fidelity, psnr, ssim
from .plots import bar_plot, table_image
from .probes import CARE, TAGS, TARGET, UNRELATED, Probe, parse_probes, probes_from_concepts
from .rank import auc, spearman
from .report import METRICS, AuditReport, AuditRow
from .run import ImagePair, run_audit

__all__ = [
    "CARE",
    "METRICS",
    "TAGS",
    "TARGET",
    "UNRELATED",
    "AuditReport",
    "AuditRow",
    "Classifier",
    "Denoiser",
    "ImagePair",
    "Probe",
    "SigmaDenoiser",
    "ZeroShotClassifier",
    "auc",
    "bar_plot",
    "care_score",
    "denoiser_drift",
    "paired_fidelity",
    "parse_probes",
    "probes_from_concepts",
    "psnr",
    "run_audit",
    "site_drift",
    "spearman",
    "ssim",
    "table_image",
    "updates_from_weights",
]
