"""Shared fixtures: tiny random models of every supported family and a tiny data set; the
``gpu`` marker skips its tests where CUDA is unavailable; every test runs with one intra-op thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from aia.testing.tiny import TINY_MODELS, write_tiny_dataset
from tests.helpers import save_model


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped, with the reason "needs CUDA", where CUDA is unavailable."""
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(needs_cuda)


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


@pytest.fixture
def saved_model(tmp_path, family):
    """``(directory, model, processor)``: a fresh tiny model of ``family`` saved in ``tmp_path / "model"``."""
    model, processor = TINY_MODELS[family](seed=0)
    return save_model(model, processor, tmp_path / "model"), model, processor


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """One intra-op thread for every test: tiny models gain nothing from more, whose spin-waits make
    them several times slower on a busy CPU (measured on 2 cores, one busy: tests/cli 46 s with 2
    threads, 7 s with 1; tests/fidelity 19-59 s, 0.9 s). The training subprocesses set ``OMP_NUM_THREADS=1``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: tiny models gain nothing from more, whose
    spin-waits make them slow on a busy CPU. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``
    (redundant now that every test has one, :func:`_one_intra_op_thread`; kept for the modules that name it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
