"""`aia train` on a saved tiny model, as tests/training/test_distributed.py launches it (plain python or
`accelerate launch`): python dist_runner.py MODEL UND GEN OUT BATCH_SIZE GRAD_ACCUM [OVERRIDE ...]

With the environment variable DIE_AT_STEP every process SIGKILLs itself when that 0-based optimizer step
starts (after the checkpoint of the step before it is written), as a crash of the whole job would."""

import os
import signal
import sys

import aia.training.step as st
from aia.training.config import load_config
from aia.training.trainer import train

model, und, gen, out, batch_size, grad_accum, *overrides = sys.argv[1:]
if "DIE_AT_STEP" in os.environ:
    schedule = st.step_schedule
    st.step_schedule = lambda step, *a, **k: (
        os.kill(os.getpid(), signal.SIGKILL) if step == int(os.environ["DIE_AT_STEP"]) else schedule(step, *a, **k)
    )
cfg = load_config(None, [
    f"model.path={model}", f"data.und={und}", f"data.gen={gen}", f"train.output_dir={out}",
    f"data.batch_size={batch_size}", f"train.grad_accum={grad_accum}", "train.max_steps=4", "train.save_every=2",
    "train.progress=false", "optim.lr=1e-3", "optim.scheduler=constant", "aia.weight_und=10", "aia.weight_gen=10",
    *overrides,
])
train(cfg)
