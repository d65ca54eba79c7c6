"""``aia --help`` and ``aia CMD --help`` import neither torch nor transformers (they stay quick)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aia.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)
_PROBE = """
import contextlib, io, json, sys
from aia.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(json.dumps({"help": out.getvalue(), "loaded": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


def _help(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_commands_are_all_probed():
    assert COMMANDS == ["answer", "demo", "eval", "generate", "plot", "profile", "score", "targets", "train"]


@pytest.mark.parametrize("argv", [(), *[(command,) for command in COMMANDS]], ids=lambda a: " ".join(a) or "aia")
def test_help_imports_neither_torch_nor_transformers(argv):
    result = _help(*argv, "--help")
    assert result["help"].startswith("usage: aia")
    assert result["loaded"] == [], f"aia {' '.join(argv)} --help imported {result['loaded']}"
