"""The collateral-risk scan and CARE-set suggestion nodes in a real ComfyUI server (CPU), random SD1.5.

One graph erases *boat* (CARE: water) and scans a small vocabulary with the checkpoint's CLIP and with the
same CLIP set to its second-to-last layer (stock CLIPSetLastLayer). Clip skip changes the vectors, not a
weight, so the two scans must not share cached vocabulary encodings: their tables differ. The suggestion
node (method 'risk') returns concept-set text. Skipped with the reason when ``COMFYUI_PATH`` is not set up.
"""

from __future__ import annotations

from tests.integration.comfy_harness import CHECKPOINT

VOCAB = "water\nharbour\nsailing boat\ntree\nhouse\nnight sky"


def _scan(clip: list) -> dict:
    return {"class_type": "CARERiskScan", "inputs": {
        "model": ["ckpt", 0], "clip": clip, "erasure": ["erase", 1], "vocabulary": "extra concepts only",
        "extra_concepts": VOCAB, "template": "{}", "top_k": 2}}  # fmt: skip


def test_risk_scan_and_suggestion_follow_the_clip_they_are_given(server):
    graph = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "skip": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["ckpt", 1], "stop_at_clip_layer": -2}},
        "concepts": {"class_type": "CAREConceptSet", "inputs": {
            "targets": "boat", "retained": "", "care": "water", "templates": "{}", "retain_weight": 1.0,
            "care_weight": 2.0, "contexts": ""}},
        "erase": {"class_type": "CAREErase", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "concepts": ["concepts", 0], "erase_scale": 1.0,
            "retain_weight": 1.0, "context_weight": 1.0, "lambda_": 0.1, "strict": False,
            "token_scope": "concept_to_eos", "sites": "auto"}},
        "scan": _scan(["ckpt", 1]),
        "scan_skip": _scan(["skip", 0]),
        "suggest": {"class_type": "CARESuggestCareSet", "inputs": {
            "model": ["ckpt", 0], "clip": ["ckpt", 1], "concepts": ["concepts", 0], "method": "risk",
            "vocabulary": "extra concepts only", "extra_concepts": VOCAB, "template": "{}", "top_k": 3,
            "synonym_residual": 0.5, "related_z": 0.0}},
    }  # fmt: skip
    entry = server.run(graph, timeout=1200)
    plain = "\n".join(entry["outputs"]["scan"]["text"])
    skipped = "\n".join(entry["outputs"]["scan_skip"]["text"])
    for table in (plain, skipped):
        assert "water" in table and "harbour" in table, table[:500]
    def ranked(table: str) -> list[str]:  # the rows with drifts, not the closing timing/cache line
        return [line for line in table.splitlines() if line.strip() and "=" not in line]

    assert ranked(plain) != ranked(skipped), "clip skip gave the same drifts: the cache ignored the CLIP layer"
    suggested = "\n".join(entry["outputs"]["suggest"]["text"])
    assert suggested.strip(), entry["outputs"]["suggest"]
