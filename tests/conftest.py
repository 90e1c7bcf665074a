"""Shared fixtures."""

from __future__ import annotations

import pytest

from tests.fakes import WordHashEncoder


@pytest.fixture
def encoder() -> WordHashEncoder:
    return WordHashEncoder()
