"""aia.noise: the known library messages are dropped, every other message of those loggers kept."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from aia.noise import NOISE, silence


class _Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_silence_drops_the_known_messages_only():
    silence()
    silence()  # idempotent
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        assert [type(f).__name__ for f in logger.filters].count("_Drop") == 1
        keep = _Keep()
        logger.addHandler(keep)
        try:
            for prefix in prefixes:
                logger.warning(f"{prefix} and the rest of the message")
            logger.warning("a real problem")
        finally:
            logger.removeHandler(keep)
        assert keep.messages == ["a real problem"], name


@pytest.mark.parametrize("quiet", [True, False])
def test_deepspeed_import_on_a_cpu_machine(quiet):
    """DeepSpeed's "Setting accelerator to CPU" (on stdout) is gone after silence(), there without it."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("deepspeed")
    if torch.cuda.is_available():
        pytest.skip("DeepSpeed says nothing about its accelerator where it finds a GPU")
    code = ("from aia.noise import silence; silence(); " if quiet else "") + (
        "from deepspeed.accelerator import get_accelerator; get_accelerator()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    said = "Setting accelerator to CPU" in out.stdout + out.stderr
    assert said is not quiet, out.stdout + out.stderr
