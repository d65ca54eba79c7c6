"""kill -9 at several moments of `aia train` (between steps, inside a checkpoint write, half way through a
metrics line); the resumed run logs bit-identical losses to an uninterrupted one.

Each killed run has its own process (the three run side by side, one thread each); the uninterrupted run
and the resumed ones then train one after the other in one process (a process costs seconds of imports, a
run of 6 tiny steps less than that)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

RUNNER = textwrap.dedent(
    """
    import os, signal, sys
    import aia.training.checkpoint as ck
    import aia.training.metrics as mx
    import aia.training.step as st
    from aia.testing.tiny import tiny_janus
    from aia.training.config import load_config
    from aia.training.trainer import train

    und, gen, where, *outs = sys.argv[1:]  # a run killed at `where`: one output folder
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if where == "between-steps":  # the 4th optimizer step never starts
        schedule = st.step_schedule
        st.step_schedule = lambda step, *a, **k: die() if step == 3 else schedule(step, *a, **k)
    elif where == "checkpoint-write":  # killed inside the second checkpoint's model save
        save, calls = ck.save_model, []
        def dying_save(*a, **k):
            calls.append(1)
            save(*a, **k)
            if len(calls) == 2:
                die()
        ck.save_model = dying_save
    elif where == "metrics-line":  # half of step 5's JSON line reaches the disk
        write = mx.MetricsWriter.write
        def torn(self, row):
            if row["step"] == 5:
                with self.path.open("a") as f:
                    f.write('{"step": 5, "loss": 1.')
                die()
            write(self, row)
        mx.MetricsWriter.write = torn
    for out in outs:  # one after the other in this process
        cfg = load_config(None, [f"data.und={und}", f"data.gen={gen}", f"train.output_dir={out}", "data.batch_size=2",
                                 "train.max_steps=6", "train.save_every=2", "train.progress=false", "optim.lr=1e-3",
                                 "optim.scheduler=constant"], check_paths=False)
        train(cfg, *tiny_janus(seed=0))
    """
)


def _run(tiny_data, outs, where="none"):
    """Train into each of ``outs`` in turn in one new process (killed at ``where``: one of them)."""
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(tiny_data[0]), str(tiny_data[1]), where, *map(str, outs)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["loss/ntp"], r.get("loss/aia/und"), r.get("loss/aia/gen")) for r in rows]


@pytest.mark.integration
def test_kill_minus_9_then_resume_is_bit_identical(tiny_data, tmp_path):
    wheres = ("between-steps", "checkpoint-write", "metrics-line")
    with ThreadPoolExecutor(len(wheres)) as pool:  # the killed runs side by side
        killed = dict(zip(wheres, pool.map(lambda where: _run(tiny_data, [tmp_path / where], where), wheres), strict=True))
    for where in wheres:
        assert killed[where].returncode == -signal.SIGKILL, killed[where].stderr[-2000:]
    reference = tmp_path / "reference"
    resumed = _run(tiny_data, [reference, *(tmp_path / where for where in wheres)])  # uninterrupted, then resumed
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    want = _losses(reference)
    assert [s for s, *_ in want] == [1, 2, 3, 4, 5, 6]
    for where in wheres:
        out = tmp_path / where
        assert _losses(out) == want, where  # bit-identical, every logged step once
        assert (out / "final" / "model.safetensors").is_file()
