"""Fixtures of the demo's tests: the digits split and a hand-made digits model."""

from __future__ import annotations

import pytest

from aia.adapters import get_adapter
from aia.demo.digits import DigitsProcessor, DigitsVQ, build_digits_model, load_split, to_image
from tests.demo.helpers import CODEBOOK, CODES


@pytest.fixture(scope="module")
def split():
    return load_split(seed=0)


@pytest.fixture(scope="module")
def hand_made():
    """A processor around the four-code VQ, a 2-layer model, its adapter, and the image of CODES."""
    processor = DigitsProcessor.build(DigitsVQ(CODEBOOK))
    model = build_digits_model(processor, num_layers=2, hidden_size=32, num_heads=2, seed=0)
    image = to_image(DigitsVQ(CODEBOOK).decode(CODES))
    return processor, model, get_adapter(model, processor), image
