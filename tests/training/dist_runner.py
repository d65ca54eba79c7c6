"""`aia train` on a saved tiny model, as tests/training/test_distributed.py launches it (plain python or
`accelerate launch`): python dist_runner.py RUN [+ RUN ...], RUN = MODEL UND GEN OUT BATCH_SIZE GRAD_ACCUM [OVERRIDE ...]

The runs train one after the other in the same processes: a launch costs seconds of start-up (imports, the
process group, DeepSpeed's), a run of 4 steps of a tiny model less than that. Each run's stderr is also written
to OUT.rank<R>.log (R: the process's rank), ending with a line "dist_runner: done" when the run returned.

A run whose first override is --die-at-step=K: every process SIGKILLs itself when that 0-based optimizer step
starts (after the checkpoint of the step before it is written), as a crash of the whole job would (the launch's
last run, then)."""

import contextlib
import os
import signal
import sys

import aia.training.step as st
from aia.training.config import load_config
from aia.training.trainer import train


class _Tee:
    """Writes to both streams (the process's stderr and the run's log)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the process's stderr
        return getattr(self.streams[0], name)


def run(model, und, gen, out, batch_size, grad_accum, *overrides):
    schedule = st.step_schedule
    if overrides and overrides[0].startswith("--die-at-step="):
        die_at, overrides = int(overrides[0].split("=", 1)[1]), overrides[1:]
        st.step_schedule = lambda step, *a, **k: (
            os.kill(os.getpid(), signal.SIGKILL) if step == die_at else schedule(step, *a, **k)
        )
    cfg = load_config(None, [
        f"model.path={model}", f"data.und={und}", f"data.gen={gen}", f"train.output_dir={out}",
        f"data.batch_size={batch_size}", f"train.grad_accum={grad_accum}", "train.max_steps=4", "train.save_every=2",
        "train.progress=false", "optim.lr=1e-3", "optim.scheduler=constant", "aia.weight_und=10", "aia.weight_gen=10",
        *overrides,
    ])
    with open(f"{out}.rank{os.environ.get('RANK', '0')}.log", "w", buffering=1) as log:
        with contextlib.redirect_stderr(_Tee(sys.stderr, log)):
            train(cfg)
            print("dist_runner: done", file=sys.stderr, flush=True)
    st.step_schedule = schedule


args = sys.argv[1:]
while args:
    end = args.index("+") if "+" in args else len(args)
    run(*args[:end])
    args = args[end + 1:]
