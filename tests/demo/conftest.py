"""Fixtures of the demo's tests: the digits split, a hand-made digits model, and the two demo runs
that several test modules read (each run once per session: a quick demo takes a minute)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from aia.adapters import get_adapter
from aia.cli import main
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


@dataclass(frozen=True)
class DemoRun:
    """A demo run: its output directory, its ``results.json``, and what it printed on stderr and stdout."""

    out: Path
    results: dict
    err: str
    stdout: str


#: the debug demo of :func:`debug_demo_run`, in a process of its own: ``python -c DEBUG_DEMO OUT``
DEBUG_DEMO = textwrap.dedent(
    """
    import sys
    from aia.demo import run_demo

    run_demo(sys.argv[1], quick=True, seed=0, seeds=1, debug=True)
    """
)


@pytest.fixture(scope="session")
def _debug_demo_process(tmp_path_factory):
    """``(out, process)``: the run of :func:`debug_demo_run`, started as soon as a demo run is needed, so that
    it runs beside :func:`quick_demo_run`'s (each demo uses one thread; the CI machine has two cores). Its
    stderr and stdout go to files next to ``out`` (a pipe nobody reads would fill up and stop it)."""
    tmp = tmp_path_factory.mktemp("demo_debug")
    out = tmp / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with (tmp / "stderr.txt").open("w") as err, (tmp / "stdout.txt").open("w") as stdout:
        process = subprocess.Popen([sys.executable, "-c", DEBUG_DEMO, str(out)], stdout=stdout, stderr=err, env=env)
    yield out, process
    if process.poll() is None:  # not waited for: no test needed it
        process.kill()
        process.wait()


def _captured(run):
    """``(run(), stderr, stdout)``: what ``run`` printed on ``sys.stderr`` and ``sys.stdout`` (as capsys sees it)."""
    err, out = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, {"AIA_DEBUG": "0"}), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        value = run()
    return value, err.getvalue(), out.getvalue()


@pytest.fixture(scope="session")
def quick_demo_run(tmp_path_factory, _debug_demo_process) -> DemoRun:
    """``aia demo --quick --ablations --seed 0`` (its overall bar on), in this process: tests/demo/test_pipeline.py
    checks its files and numbers, tests/demo/test_progress.py what it printed."""
    out = tmp_path_factory.mktemp("demo")
    code, err, stdout = _captured(lambda: main(["demo", "--out", str(out), "--quick", "--ablations", "--seed", "0"]))
    assert code == 0, err[-3000:]
    return DemoRun(out, json.loads((out / "results.json").read_text()), err, stdout)


@pytest.fixture(scope="session")
def quick_demo(quick_demo_run) -> tuple[Path, dict]:
    """``(out, results)`` of :func:`quick_demo_run`."""
    return quick_demo_run.out, quick_demo_run.results


@pytest.fixture(scope="session")
def debug_demo_run(_debug_demo_process) -> DemoRun:
    """The quick demo again in a new process, seed 0, one post-training seed, no ablations (the default with
    ``quick``), with ``debug=True`` (each run's own output instead of the overall bar):
    tests/demo/test_pipeline.py compares its numbers with :func:`quick_demo_run`'s, tests/demo/test_progress.py
    checks what it printed."""
    out, process = _debug_demo_process
    err = out.parent / "stderr.txt"
    assert process.wait(timeout=1800) == 0, err.read_text()[-3000:]
    results = json.loads((out / "results.json").read_text())
    return DemoRun(out, results, err.read_text(), (out.parent / "stdout.txt").read_text())
