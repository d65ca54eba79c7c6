"""Measuring a model's layer-wise interaction intensity on a data file: teacher forcing
(:mod:`.teacher`), while decoding (:mod:`.decode`), the bookkeeping both share
(:mod:`.samples`), and the profile file format (:mod:`.profile`). :mod:`.run` profiles with an
``aia train`` config's model, data, prompts, spans and image preprocessing (``aia profile --config``;
not imported here: it reads the training config)."""

from aia.measure.decode import decode_example, decode_profile
from aia.measure.profile import IntensityProfile, load_profile, save_profile, summary_text
from aia.measure.teacher import profile_model

__all__ = [
    "IntensityProfile",
    "decode_example",
    "decode_profile",
    "load_profile",
    "profile_model",
    "save_profile",
    "summary_text",
]
