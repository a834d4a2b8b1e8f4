"""Fixtures and the GPU skip; the shared helpers are in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import write_corpus


@pytest.fixture
def corpus(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
