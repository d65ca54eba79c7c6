"""lmms-eval's own command line, ``python -m lmms_eval --model aia ...``, on the three-question local
task shipped in ``tests/evaluate/lmms_task/`` (data file, images and task YAML), with a tiny random
Janus-Pro: lmms-eval finds the plugin through its entry point, runs its loop, and its answers equal
``aia answer``'s on the same questions; the device may be given both ways; a run that fails exits
non-zero through ``python -m aia.evaluate.lmms`` (lmms-eval itself exits 0).

The interpreter that runs lmms-eval: ``AIA_LMMS_PYTHON`` (CI's own environment with the ``lmms``
extra, made by ``.ci/run``), else this one when it has lmms-eval. Where lmms-eval is set up this
test fails, not skips, when lmms-eval breaks (an import error, a run that writes no results); it
is skipped only where lmms-eval is not installed at all and ``AIA_LMMS_PYTHON`` is not set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aia.evaluate import answer
from aia.testing import tiny_janus
from tests.helpers import save_model

TASK_DIR = Path(__file__).resolve().parent / "lmms_task"
TASK = "aia_tiny_vqa"
MAX_NEW_TOKENS = 4  # the task YAML's generation_kwargs


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled",
            "HF_HOME": str(tmp_path / "hf")}  # fmt: skip


def lmms_python() -> str:
    configured = os.environ.get("AIA_LMMS_PYTHON")
    if configured:
        return configured
    if importlib.util.find_spec("lmms_eval") is None:
        pytest.skip('lmms-eval is not installed here (pip install torch==<yours> -e ".[lmms]"); CI runs this test '
                    "with AIA_LMMS_PYTHON, in its own environment (.ci/run)")  # fmt: skip
    return sys.executable


@pytest.mark.integration
def test_lmms_eval_cli_answers_as_aia_answer(tmp_path):
    python = lmms_python()
    model_dir = save_model(*tiny_janus(seed=0, num_layers=1), tmp_path / "model")
    task = shutil.copytree(TASK_DIR, tmp_path / "task")
    out = tmp_path / "lmms_out"
    # the device both ways: lmms-eval alone would pass it twice (a TypeError)
    command = [python, "-m", "aia.evaluate.lmms", "--model", "aia", "--model_args",
               f"pretrained={model_dir},device=cpu", "--device", "cpu", "--tasks", TASK, "--include_path", str(task),
               "--batch_size", "2", "--output_path", str(out), "--log_samples"]  # fmt: skip
    run = subprocess.run(command, cwd=task, env=_env(tmp_path), capture_output=True, text=True, timeout=1200)
    log = (run.stdout + run.stderr)[-4000:]
    assert run.returncode == 0, f"lmms-eval failed (exit {run.returncode}):\n{log}"

    samples_files = sorted(out.rglob(f"*samples_{TASK}*.jsonl"))
    assert samples_files, f"lmms-eval wrote no samples under {out}:\n{log}"
    samples = sorted((json.loads(line) for line in samples_files[-1].read_text().splitlines() if line.strip()),
                     key=lambda s: s["doc_id"])  # fmt: skip
    got = [s["filtered_resps"][0] if isinstance(s["filtered_resps"], list) else s["filtered_resps"] for s in samples]
    docs = [json.loads(line) for line in (TASK_DIR / f"{TASK}.jsonl").read_text().splitlines()]
    assert len(got) == len(docs) and all(isinstance(text, str) for text in got), got

    # the same questions (lmms-eval's context: the task's question and suffix) through aia answer
    questions = [{"id": d["id"], "image": str(TASK_DIR / d["image"]), "question": s["arguments"][0]
                  if isinstance(s.get("arguments"), list) else s["input"], "answer": ""}
                 for d, s in zip(docs, samples, strict=True)]  # fmt: skip
    (tmp_path / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    answer(model_dir, "custom", tmp_path / "questions.jsonl", tmp_path / "pred.jsonl", batch_size=2,
           max_new_tokens=MAX_NEW_TOKENS, progress=False)  # fmt: skip
    expected = [json.loads(line)["prediction"] for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [text.strip() for text in got] == expected and any(expected)


@pytest.mark.integration
def test_a_failed_lmms_eval_run_exits_non_zero_through_the_wrapper(tmp_path):
    python = lmms_python()
    task = shutil.copytree(TASK_DIR, tmp_path / "task")
    args = ["--model", "aia", "--model_args", f"pretrained={tmp_path / 'no-model'}", "--device", "cpu",
            "--tasks", TASK, "--include_path", str(task)]  # fmt: skip
    run = subprocess.run([python, "-m", "aia.evaluate.lmms", *args], cwd=task, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 1, (run.stdout + run.stderr)[-3000:]
    assert "Error during evaluation" in run.stdout and "no-model" in run.stdout + run.stderr
    assert "exited 0; exit status 1" in run.stderr
