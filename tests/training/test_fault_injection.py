"""kill -9 at several moments of `aia train` (between steps, inside a checkpoint write, half way through a
metrics line); the resumed run logs bit-identical losses to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import textwrap

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

    und, gen, out, where = sys.argv[1:5]
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
    cfg = load_config(None, [f"data.und={und}", f"data.gen={gen}", f"train.output_dir={out}", "data.batch_size=2",
                             "train.max_steps=6", "train.save_every=2", "train.progress=false", "optim.lr=1e-3",
                             "optim.scheduler=constant"], check_paths=False)
    train(cfg, *tiny_janus(seed=0))
    """
)


def _run(tiny_data, out, where="none"):
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(tiny_data[0]), str(tiny_data[1]), str(out), where],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _losses(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["loss/ntp"], r.get("loss/aia/und"), r.get("loss/aia/gen")) for r in rows]


@pytest.mark.integration
def test_kill_minus_9_then_resume_is_bit_identical(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    assert _run(tiny_data, reference).returncode == 0
    want = _losses(reference)
    assert [s for s, *_ in want] == [1, 2, 3, 4, 5, 6]
    for where in ("between-steps", "checkpoint-write", "metrics-line"):
        out = tmp_path / where
        killed = _run(tiny_data, out, where)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        resumed = _run(tiny_data, out)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert _losses(out) == want, where  # bit-identical, every logged step once
        assert (out / "final" / "model.safetensors").is_file()
