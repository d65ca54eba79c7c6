"""`aia profile` reads parquet data, as `aia train` does (one reader, aia.data.read_records)."""

import json
import shutil

import datasets
import pytest

from aia.cli import main
from aia.data import read_records


@pytest.mark.parametrize("family", ["janus"])
@pytest.mark.parametrize("task", ["und", "gen"])
def test_profile_reads_parquet_like_jsonl(saved_model, tiny_data, task, tmp_path):
    model_dir, _, _ = saved_model
    src = tiny_data[0] if task == "und" else tiny_data[1]
    folder = tmp_path / "data"
    shutil.copytree(src.parent, folder)
    jsonl = folder / src.name
    parquet = folder / f"{task}.parquet"
    datasets.Dataset.from_list(read_records(jsonl)).to_parquet(str(parquet))
    assert read_records(parquet) == read_records(jsonl)

    outs = {}
    for name, data in (("jsonl", jsonl), ("parquet", parquet)):
        outs[name] = tmp_path / f"{name}.json"
        argv = ["profile", str(model_dir), "--data", str(data), "--task", task, "--samples", "3"]
        assert main([*argv, "--out", str(outs[name]), "--quiet"]) == 0
    a, b = (json.loads(outs[k].read_text()) for k in ("jsonl", "parquet"))
    assert a["per_sample"] == b["per_sample"] and a["n"] == b["n"] == 3
