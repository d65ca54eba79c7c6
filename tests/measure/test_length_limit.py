"""aia profile skips and counts samples longer than max_length (or the model's positions), as aia train does."""

import pytest

from aia.adapters import get_adapter
from aia.data import read_records
from aia.errors import DataError
from aia.measure.decode import DecodeSettings, decode_profile
from aia.measure.samples import model_length_limit
from aia.measure.teacher import profile_model
from aia.testing.tiny import tiny_janus


def test_teacher_and_decode_skip_long_samples(tiny_data, capsys):
    model, processor = tiny_janus(seed=0)
    adapter = get_adapter(model, processor)
    records = read_records(tiny_data[0])
    lengths = sorted(len(adapter.encode(r, "und", tiny_data[0].parent)) for r in records)
    limit = lengths[len(lengths) // 2]
    fit = sum(n <= limit for n in lengths)
    assert 0 < fit < len(lengths)
    profile = profile_model(model, processor, tiny_data[0], "und", samples=len(records), progress=False,
                            max_length=limit)
    assert profile.n == fit and profile.skipped == len(records) - fit
    assert profile.settings["max_length"] == limit
    assert "too long" in capsys.readouterr().err
    decoded = decode_profile(model, processor, tiny_data[0], "und", samples=len(records), progress=False,
                             settings=DecodeSettings(max_new_tokens=2), max_length=limit)
    assert decoded.n == fit and decoded.settings["max_length"] == limit
    with pytest.raises(DataError, match="none of the"):
        profile_model(model, processor, tiny_data[0], "und", samples=2, progress=False, max_length=3)


def test_default_limit_is_the_models_positions():
    model, _ = tiny_janus(seed=0)
    assert model_length_limit(model, None) == model.config.get_text_config().max_position_embeddings
    assert model_length_limit(model, 7) == 7
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        model_length_limit(model, 0)
