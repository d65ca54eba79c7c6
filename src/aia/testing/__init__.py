"""Tiny random models of every supported family (the unified ones, the understanding references and the
GLM-Image generation reference), built offline from the real transformers config classes, and a tiny data
set: for tests and for smoke-testing a set-up."""

from aia.testing.tiny import TINY_MODELS, tiny_chameleon, tiny_emu3, tiny_janus, write_tiny_dataset
from aia.testing.tiny_glm_image import tiny_glm_image
from aia.testing.tiny_understanding import TINY_UNDERSTANDING_MODELS, save_understanding_model

__all__ = [
    "TINY_MODELS",
    "TINY_UNDERSTANDING_MODELS",
    "save_understanding_model",
    "tiny_chameleon",
    "tiny_emu3",
    "tiny_glm_image",
    "tiny_janus",
    "write_tiny_dataset",
]
