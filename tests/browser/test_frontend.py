"""The pack in the real ComfyUI frontend (headless Debian chromium driven by playwright-core).

Needs what the integration tests need (``COMFYUI_PATH``...), plus ``/usr/bin/chromium`` (``apt-get install
chromium``) and ``playwright-core`` in ``tests/browser/node_modules`` (``npm ci --prefix tests/browser``;
``tests/browser/setup_browser.sh`` does both). Skipped, with the reason, when any is missing.

Checks: the frontend lists every CARE node the server has; every example workflow loads with no missing
node and no dialog; the frontend's own conversion of each example to an API prompt equals the one the
integration tests submit; the pack's web extension registers, colours CARE nodes and, after the first
example runs from the editor, shows the erasure report on the report node.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.comfy_harness import CHECKPOINT, REPO, ComfyServer, comfy_or_skip, load_workflow, ui_to_api

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SCREENSHOT_DIR = Path(os.environ.get("CARE_SCREENSHOT_DIR", REPO / "out" / "browser"))


def _skip_reason() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        # a fresh clone: install the pinned playwright-core from the lock file (it never downloads a browser)
        if shutil.which("npm") is not None:
            subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=HERE, capture_output=True, timeout=300,
                env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"},
            )  # fmt: skip
        if not (HERE / "node_modules" / "playwright-core").is_dir():
            return "playwright-core is not installed (npm ci --prefix tests/browser)"
    return None


@pytest.fixture(scope="module")
def frontend():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    env, reason = comfy_or_skip()
    if env is None:
        pytest.skip(reason)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    with ComfyServer(env) as server:
        run = subprocess.run(
            [
                "node", str(HERE / "frontend_check.mjs"), server.url, str(REPO / "example_workflows"),
                str(SCREENSHOT_DIR / "care_example_run.png"), CHECKPOINT,
            ],
            capture_output=True, text=True, timeout=900, cwd=HERE,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert "error" not in result, result["error"]
        yield result, server.object_info()


def test_frontend_lists_every_care_node(frontend):
    result, info = frontend
    assert result["frontend"]["careNodes"] == sorted(n for n in info if n.startswith("CARE"))
    assert len(result["frontend"]["careNodes"]) >= 6


def test_every_example_loads_without_missing_nodes(frontend):
    result, _ = frontend
    files = sorted(p.name for p in (REPO / "example_workflows").glob("*.json"))
    assert sorted(result["examples"]) == files
    for name, seen in result["examples"].items():
        assert seen["missing"] == [], f"{name}: missing nodes {seen['missing']}"
        assert not [d for d in seen["dialogs"] if "missing" in d.lower()], f"{name}: {seen['dialogs']}"
        assert seen["careNodes"] > 0


def test_frontend_api_conversion_matches_the_tests_conversion(frontend):
    result, info = frontend
    for name, seen in result["examples"].items():
        ours = ui_to_api(load_workflow(REPO / "example_workflows" / name), info)
        theirs = {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in seen["api"].items()}
        assert ours == theirs, f"{name}: UI->API conversion differs from the frontend's"


def test_web_extension_runs(frontend):
    result, _ = frontend
    assert "care.erasure" in result["frontend"]["extensions"]
    assert result["frontend"]["marker"] == {"extensionLoaded": True}
    for name, seen in result["examples"].items():
        assert seen["careColoured"] == seen["careNodes"], f"{name}: CARE nodes not coloured"
    assert not [e for e in result["pageErrors"] if "care" in e.lower()], result["pageErrors"]


def test_report_is_shown_on_the_node_after_a_run_from_the_editor(frontend):
    result, _ = frontend
    run = result["run"]
    assert run and run["reportText"], f"no report shown: {run}"
    assert "residual" in run["reportText"] and "boat" in run["reportText"]
    assert run["domWidget"]
