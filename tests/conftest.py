"""Shared test set-up: CPU only, seeded, tiny; paths to the shared conformance fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURE = ROOT.parent / "shared" / "conformance" / "official_nar_fixture.pt"


def conformance_fixture_path() -> Path:
    """The official-format fixture: ``$NAR_CONFORMANCE_FIXTURE`` or ``../shared/conformance/…``."""
    return Path(os.environ.get("NAR_CONFORMANCE_FIXTURE", DEFAULT_FIXTURE))


@pytest.fixture(scope="session")
def conformance() -> dict:
    path = conformance_fixture_path()
    if not path.is_file():
        pytest.skip(f"conformance fixture not found at {path} (set NAR_CONFORMANCE_FIXTURE)")
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
