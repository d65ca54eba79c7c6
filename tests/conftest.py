"""Shared fixtures: tiny random models of every supported family and a tiny data set."""

from __future__ import annotations

from pathlib import Path

import pytest

from aia.testing.tiny import TINY_MODELS, write_tiny_dataset


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> tuple[Path, Path]:
    """``(und_path, gen_path)``: 8 understanding and 8 generation records with 32x32 PNGs."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_data"), n_und=8, n_gen=8, image_size=32, seed=0)


@pytest.fixture(params=sorted(TINY_MODELS))
def family(request) -> str:
    """Each supported model family in turn: ``"chameleon"``, ``"emu3"``, ``"janus"``."""
    return request.param


@pytest.fixture
def tiny_model(family):
    """A fresh ``(model, processor)`` of ``family`` (seed 0, eval mode)."""
    return TINY_MODELS[family](seed=0)
