"""What `aia demo` shows while it runs: one overall bar with its ETA, which ends full; each run's
own output goes to DIR/logs/ (shown with debug=True). The demo runs are tests/demo/conftest.py's
(once per session: tests/demo/test_pipeline.py reads them too)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aia.demo.pipeline import QUICK, _planned_units

TINY = replace(QUICK, steps=4, post_steps=2, profile_samples=4, gen_samples_per_digit=1)


def test_the_planned_units_count_every_run_and_evaluation():
    from aia.demo.pipeline import _DATA_UNITS, _REPORT_UNITS, _Demo, _eval_units

    demo = _Demo(None, TINY, True, 0, (0, 1), "cpu", False, progress=False, debug=False)
    train = 4 * (1 + 1 + 2) + 2 * 2 * 2 * 2  # references + pretraining, then 2 seeds x (baseline, aia) x 2 tasks
    evaluate = (2 + 4) * (_eval_units(TINY, "und") + _eval_units(TINY, "gen"))  # shared: und, gen, und + gen
    assert _planned_units(demo) == _DATA_UNITS + train + evaluate + _REPORT_UNITS


@pytest.mark.integration
def test_the_demo_shows_one_bar_and_keeps_the_runs_output_in_logs(quick_demo_run, debug_demo_run):
    """What tests/demo/conftest.py's quick demo printed (run once for the demo's tests), then its run with
    ``debug``."""
    err = quick_demo_run.err.replace("\r", "\n")
    bars = [line for line in err.splitlines() if line.startswith("aia demo:") and "%|" in line]
    assert bars and "100%|" in bars[-1] and "ETA" in bars[-1], bars[-3:]
    for noise in ("aia train:", "check und data", "Loading weights", "profile und", "Setting accelerator"):
        assert noise not in err + quick_demo_run.stdout, noise
    assert "== aia demo [7/7] report" in err
    assert "aia train:" in (quick_demo_run.out / "logs" / "seed0" / "aia.txt").read_text()

    err = debug_demo_run.err.replace("\r", "\n")
    assert "aia train:" in err and "-- training seed0/aia" in err and "check und data" in err
    assert not any(line.startswith("aia demo:") and "%|" in line for line in err.splitlines())
    assert not (debug_demo_run.out / "logs").exists()
