"""The README's code cannot drift: every ``python`` block runs as written (on tiny models), and
its ``aia train`` commands load and keep each run in its own folder.

A block that needs what a test cannot have (real weights, a GPU) is preceded by an HTML comment
``<!-- no-test: the reason -->``. Files a block names are made first in the folder it runs in:
``MODEL_DIR`` (a saved tiny Janus-Pro and its processor) and ``cat.png``.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"(?P<before>(?:<!--.*?-->\s*)?)```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
NO_TEST = re.compile(r"<!--\s*no-test:\s*(?P<reason>\S.*?)\s*-->", re.S)


def blocks(lang: str) -> list[tuple[int, str, str | None]]:
    """``(line, code, no-test reason or None)`` of each ``lang`` block of the README."""
    text = README.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group("lang") == lang:
            skip = NO_TEST.search(m.group("before"))
            out.append((text.count("\n", 0, m.start("code")) + 1, m.group("code"), skip and skip.group("reason")))
    return out


PYTHON = blocks("python")


def test_the_readme_has_python_blocks_and_every_skip_gives_a_reason():
    assert len(PYTHON) >= 2
    assert all(reason is None or reason.strip() for _, _, reason in PYTHON)


@pytest.mark.parametrize("line, code, reason", PYTHON, ids=[f"README.md:{line}" for line, _, _ in PYTHON])
def test_python_block_runs(line, code, reason, tmp_path, monkeypatch):
    if reason:
        pytest.skip(f"README.md:{line}: {reason}")
    if "MODEL_DIR" in code:
        from aia.testing import tiny_janus
        from tests.helpers import save_model

        save_model(*tiny_janus(seed=0), tmp_path / "MODEL_DIR")
    if "cat.png" in code:
        from PIL import Image

        Image.new("RGB", (40, 32), "orange").save(tmp_path / "cat.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__readme__"})


def _train_commands() -> list[list[str]]:
    """The ``aia train CONFIG key=value ...`` commands of the README's bash blocks (comments and
    line continuations resolved)."""
    commands = []
    for _, code, _ in blocks("bash"):
        for command in code.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            if words[:2] == ["aia", "train"] and len(words) > 2 and words[2].endswith(".yaml"):
                commands.append(words[2:])
    return commands


def test_the_train_commands_load_and_the_baseline_writes_to_its_own_folder():
    from aia.training.config import load_config

    runs = [load_config(ROOT / config, overrides, check_paths=False) for config, *overrides in _train_commands()]
    baselines = [c for c in runs if not c.aia.enabled]
    assert runs and baselines, "the README documents an AIA run and its NTP baseline"
    aia_folders = {c.train.output_dir for c in runs if c.aia.enabled}
    for c in baselines:
        assert c.train.output_dir not in aia_folders, c.train.output_dir
