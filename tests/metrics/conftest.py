"""Fixtures for the metric tests; helpers live in ``metric_helpers`` (importable from test modules)."""

from __future__ import annotations

import pytest
from metric_helpers import TinyExtractor


@pytest.fixture
def tiny_extractor() -> TinyExtractor:
    return TinyExtractor().eval()
