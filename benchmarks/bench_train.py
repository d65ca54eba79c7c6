"""The whole ``aia train`` step, AIA on vs AIA off, side by side in one run.

Runs :func:`aia.training.trainer.train` twice on the same Janus-family model (random weights)
and the same data, once with ``aia.enabled=true`` and once with ``false``, and compares
the median ``time/step_s`` the trainer logs (data encoding, VQ, forward, backward,
optimizer), skipping the first ``--warmup`` steps. The language model has the core
benchmark's CPU shape (4 layers, hidden 512, 8 heads); images of 192x192 pixels give
24 x 24 = 576 image tokens per sample, after a ~20-token prompt.

    python benchmarks/bench_train.py                      # CPU
    python benchmarks/bench_train.py --device cuda --mixed-precision bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from aia.testing.tiny import tiny_janus, write_tiny_dataset
from aia.training.config import load_config
from aia.training.trainer import train


def run(enabled: bool, data: tuple[Path, Path], out: Path, args) -> list[dict]:
    model, processor = tiny_janus(
        seed=0,
        num_layers=4,
        image_size=192,
        hidden_size=512,
        intermediate_size=1408,
        num_attention_heads=8,
        num_key_value_heads=8,
    )
    cfg = load_config(
        None,
        [
            f"data.und={data[0]}",
            f"data.gen={data[1]}",
            f"train.output_dir={out}",
            f"aia.enabled={str(enabled).lower()}",
            f"data.batch_size={args.batch_size}",
            f"train.max_steps={args.steps}",
            f"train.mixed_precision={args.mixed_precision}",
            "train.progress=false",
            "train.intensity_every=0",
            "optim.warmup_ratio=0",
        ],
        check_paths=False,
    )
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.mixed_precision)  # as train() builds it
    return train(cfg, model, processor, accelerator=accelerator).history


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=2, help="samples per task per step")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--mixed-precision", default="no")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = write_tiny_dataset(tmp / "data", n_und=16, n_gen=16, image_size=192, seed=0)
        times = {}
        # alternate twice so that machine drift hits both variants alike
        for rep in range(2):
            for enabled in (False, True):
                hist = run(enabled, data, tmp / f"run_{enabled}_{rep}", args)
                times.setdefault(enabled, []).extend(r["time/step_s"] for r in hist[args.warmup :])
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"\naia train step, Janus-family model (LM 4 x 512, 576 image tokens), batch {args.batch_size} per task")
    print(f"{'AIA':<6} {'step s':>9} {'x off':>7}")
    print(f"{'off':<6} {off:>9.4f} {1.0:>7.3f}")
    print(f"{'on':<6} {on:>9.4f} {on / off:>7.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"off_s": off, "on_s": on, "ratio": on / off}))


if __name__ == "__main__":
    main()
