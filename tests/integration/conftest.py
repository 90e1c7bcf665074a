"""Fixtures shared by the real-ComfyUI integration tests."""

from __future__ import annotations

import pytest

from tests.integration.comfy_harness import ComfyServer, comfy_or_skip


@pytest.fixture(scope="module")
def server():
    """A real ComfyUI server with this pack linked in, one per test module; skips when none is set up."""
    env, reason = comfy_or_skip()
    if env is None:
        pytest.skip(reason)
    srv = ComfyServer(env).start()
    try:
        yield srv
    finally:
        srv.stop()
