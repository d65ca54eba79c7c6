"""SampleTally's progress bar counts the samples that will be measured, not ``--samples``."""

from __future__ import annotations

import torch

from aia.measure.samples import SampleTally


def test_the_bar_counts_the_usable_samples_and_ends_full(capsys):
    tally = SampleTally("und", samples=100, mode="teacher", progress=True, records=6)
    assert tally.bar.total == 6  # 6 records, not --samples 100
    tally.add(torch.ones(2))
    tally.skip(ValueError("x.png: no such image"))  # a bad record: one less to measure
    tally.add(None)  # an empty query set: excluded
    for _ in range(3):
        tally.add(torch.ones(2))
    assert (tally.bar.n, tally.bar.total) == (4, 4)
    profile = tally.profile(torch.nn.Linear(1, 1), "m", "data.jsonl", 6)
    assert profile.n == 4
    err = capsys.readouterr().err
    assert "4/4" in err and "/100" not in err and "/6" in err


def test_the_bar_is_samples_long_when_the_data_holds_more(capsys):
    tally = SampleTally("gen", samples=2, mode="decode", progress=True, records=50)
    assert tally.bar.total == 2
    tally.add(None)
    tally.add(torch.ones(2))
    assert tally.bar.total == 2
    tally.add(torch.ones(2))
    assert (tally.bar.n, tally.bar.total) == (2, 2) and tally.full
    assert SampleTally("und", 7, "teacher", progress=False).bar.total == 7  # records unknown
