"""The shipped 2-process CPU accelerate config really starts two processes and trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aia.testing.tiny import tiny_janus
from tests.helpers import save_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_accelerate_launch_with_the_shipped_cpu_config(tiny_data, tmp_path):
    model = save_model(*tiny_janus(seed=0), tmp_path / "model")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        f"model:\n  path: {model}\ndata:\n  und: {tiny_data[0]}\n  gen: {tiny_data[1]}\n  batch_size: 2\n"
        f"train:\n  max_steps: 2\n  output_dir: {tmp_path / 'run'}\n  progress: false\n"
    )
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run(
        [str(launcher), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu_2proc.yaml"),
         "-m", "aia", "train", str(cfg)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
