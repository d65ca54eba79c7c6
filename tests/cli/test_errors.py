"""docs/ERRORS.md, run: every bad input of its table gives exactly the one line written there."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from aia.measure.profile import IntensityProfile
from aia.testing.tiny import tiny_janus
from tests.helpers import run_cli, save_model

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^\| (?P<input>[^|]+) \| `aia (?P<argv>[^`]+)` \| `(?P<seen>.+)` \|$")


def table_rows() -> list[dict]:
    rows = [m.groupdict() for line in (ROOT / "docs" / "ERRORS.md").read_text().splitlines() if (m := ROW.match(line))]
    assert len(rows) >= 15
    return rows


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_data):
    tmp = tmp_path_factory.mktemp("bad")
    model = save_model(*tiny_janus(seed=0), tmp / "model")
    for name in ("noweights", "truncated", "noprocessor", "badconfig"):
        shutil.copytree(model, tmp / name)
    (tmp / "noweights" / "model.safetensors").unlink()
    weights = tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for f in [*(tmp / "noprocessor").glob("*token*"), *(tmp / "noprocessor").glob("*processor*")]:
        f.unlink()
    (tmp / "badconfig" / "config.json").write_text("{architectures: 1}")
    (tmp / "latin1.jsonl").write_bytes("é".encode("latin-1"))
    (tmp / "broken.jsonl").write_text('{"a": 1}\noops\n')
    (tmp / "empty.json").write_text("[]")
    (tmp / "bad.yaml").write_text("model:\n  path: [unclosed\n")
    (tmp / "good.yaml").write_text("model:\n  path: model\n")
    (tmp / "eval_typo.yaml").write_text("models: {a: m}\nunderstanding:\n  pope: {data: d}\noptions: {batchsize: 8}\n")
    profile = IntensityProfile.from_per_sample("m", "und", [[0.2, 0.3]]).to_dict()
    profile["per_sample"] = [[0.2, 1.5]]
    profile["mean"], profile["std"] = [0.2, 1.5], [0.0, 0.0]
    (tmp / "outside.json").write_text(json.dumps(profile))
    (tmp / "torn.jsonl").write_text('{"step": 1, "loss/ntp": 1.0}\n{"step": 2, "loss/ntp": 0.9, "lo\n')
    return {"<model>": str(model), "<data>": str(tiny_data[0]), "<tmp>": str(tmp)}


def _fill(text: str, inputs: dict) -> str:
    for key, value in inputs.items():
        text = text.replace(key, value)
    return text


def _unfill(text: str, inputs: dict) -> str:
    for key, value in sorted(inputs.items(), key=lambda kv: -len(kv[1])):
        text = text.replace(value, key)
    return text


@pytest.mark.parametrize("row", table_rows(), ids=lambda r: r["input"].strip())
def test_documented_bad_input(row, inputs, capsys):
    if "--device cuda" in row["argv"]:
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("checks the machine without CUDA")
    argv = _fill(row["argv"], inputs).split()
    code, err = run_cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("Loading", "Writing"))]
    assert code == 2, err
    assert len(lines) == 1, err  # one line, no traceback
    seen, want = _unfill(lines[0], inputs), row["seen"]
    if want.endswith("..."):
        assert seen.startswith(want[:-3]), seen
    else:
        assert seen == want


def test_debug_shows_the_traceback(inputs):
    from aia.cli import main

    with pytest.raises(ValueError, match="unknown device"):
        main(["--debug", "profile", inputs["<model>"], "--data", inputs["<data>"], "--task", "und",
              "--out", str(Path(inputs["<tmp>"]) / "p.json"), "--device", "foo"])


def test_disk_full_says_so(monkeypatch, capsys):
    import errno

    import aia.cli as cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(func=full)
    code = cli.main(["targets", "--preset", "emu3"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "aia targets: error: no space left on the device: /runs/x/metrics.jsonl"
