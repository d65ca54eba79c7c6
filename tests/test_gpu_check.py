"""benchmarks/gpu_check.sh without a GPU: it runs up to the first GPU-only step and stops cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_gpu_check_stops_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 3, proc.stderr
    err_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert err_lines == [
        "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run this on a machine with an NVIDIA GPU"
    ]
    env_txt = (tmp_path / "out" / "env.txt").read_text()
    assert "cuda available: False" in env_txt and "torch" in env_txt
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "| env | passed |" in summary
    assert "| cuda | not available" in summary
    assert not (tmp_path / "out" / "pytest_gpu.txt").exists()  # no GPU step ran


def test_check_routes_records_every_self_check_on_cpu(tmp_path):
    """The script gpu_check.sh runs for the self-check verdicts, here on the CPU's fused op."""
    out = tmp_path / "routes.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "check_routes.py"), "--device", "cpu", "--dtypes", "float32",
         "--head-dims", "8", "--json", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    routes = json.loads(out.read_text())
    assert routes["self_checks"] == {"cpu/float32/flash/d=8,dv=0": "passed", "cpu/float32/flash/d=8,dv=8": "passed"}
    assert routes["routes"]["cpu/float32/d=8,dv=8"] == "fused flash, one-row math"
    assert "2 self-checks, 0 failed" in proc.stdout
