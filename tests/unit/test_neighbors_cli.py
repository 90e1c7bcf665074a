"""``care-erasure scan`` / ``suggest`` on the committed toy world (skipped until its weights exist)."""

from __future__ import annotations

import json

import pytest

from erasure.cli import main
from erasure.toyworld.io import MODEL_FILE, WEIGHTS_DIR

pytestmark = pytest.mark.skipif(not (WEIGHTS_DIR / MODEL_FILE).exists(), reason="toy-world weights not committed yet")


def test_scan_and_suggest_commands(tmp_path, capsys) -> None:
    out = tmp_path / "scan.json"
    assert main(["scan", "--erase", "boat", "--top", "5", "--cache-dir", str(tmp_path), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    ranked = [r["concept"] for r in report["rows"]]
    assert "boat" not in ranked and len(ranked) >= 20  # the toy vocabulary minus the target
    assert (report["excluded"][0]["concept"], report["excluded"][0]["reason"]) == ("boat", "target")
    # second run: the vocabulary comes from the cache
    assert main(["scan", "--erase", "boat", "--top", "5", "--cache-dir", str(tmp_path), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["stats"]["encoded"] == 0
    sug = tmp_path / "suggest.json"
    assert main(["suggest", "--targets", "boat", "--method", "text", "--no-cache", "--extra", "a boat",
                 "--json", str(sug)]) == 0
    s = json.loads(sug.read_text())
    assert "a boat" not in [c["concept"] for c in s["suggested"]]
    assert ("a boat", "contains target") in [(f["concept"], f["reason"]) for f in s["flagged"]]
    assert "CARE list" in capsys.readouterr().out
