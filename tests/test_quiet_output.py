"""What ``aia train`` prints on a tiny run: its own log line and bar, not the libraries' bars at
every save (transformers' "Writing model shards")."""

from __future__ import annotations

import yaml

from aia.cli import main
from aia.testing import tiny_emu3, write_tiny_dataset
from tests.helpers import save_model


def test_a_tiny_training_run_prints_no_library_bars(tmp_path, capsys):
    model = save_model(*tiny_emu3(seed=0, num_layers=1), tmp_path / "model")
    und, gen = write_tiny_dataset(tmp_path / "data", n_und=4, n_gen=4)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"path": str(model)}, "data": {"und": str(und), "gen": str(gen), "batch_size": 2},
        "aia": {"enabled": False}, "train": {"output_dir": str(tmp_path / "out"), "max_steps": 2, "save_every": 1},
    }))  # fmt: skip
    capsys.readouterr()  # saving the tiny model above has its own bar
    assert main(["train", str(config)]) == 0
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "aia train: " in err and "2/2" in err
    for noise in ("Writing model shards", "Removed shared tensor"):
        assert noise not in err, noise
