"""Figures: the plotted data equals the input, files are written, bad input fails clearly."""

from __future__ import annotations

import numpy as np
import pytest

from aia.plots import build_losses_figure, plot_losses, plot_profiles
from aia.targets.presets import TargetProfile
from tests.helpers import random_profile, write_jsonl


def profile(task, model, L=30, n=6, seed=0):
    return random_profile(task, model, layers=L, n=n, seed=seed)


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.lines}


def band(ax, index):
    """Lower/upper y of the index-th fill_between band (its polygon's vertices)."""
    verts = ax.collections[index].get_paths()[0].vertices
    return verts


def test_plot_profiles_data_and_files(tmp_path):
    und_a, und_b, gen = profile("und", "A", seed=1), profile("und", "B", seed=2), profile("gen", "A", seed=3)
    targets = TargetProfile.preset("janus-pro")
    res = plot_profiles([und_a, gen, und_b], ["A und", "A gen", "B und"], targets, tmp_path / "fig.png")
    assert [p.name for p in res.paths] == ["fig.png", "fig.svg"]
    assert res.paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in res.paths[1].read_bytes()[:1000]
    gen_ax, und_ax = res.figure.axes
    assert "generation" in gen_ax.get_title() and "understanding" in und_ax.get_title()
    assert "A, B" in und_ax.get_title() and "n=6, 6" in und_ax.get_title()
    assert gen_ax.get_xlabel() == "layer" and "intensity" in und_ax.get_ylabel()

    und_lines = lines_by_label(und_ax)
    assert set(und_lines) == {"A und", "B und", "target und"}
    np.testing.assert_allclose(und_lines["A und"].get_ydata(), und_a.mean)
    np.testing.assert_allclose(und_lines["B und"].get_ydata(), und_b.mean)
    np.testing.assert_array_equal(und_lines["A und"].get_xdata(), np.arange(30))
    np.testing.assert_allclose(und_lines["target und"].get_ydata(), targets.per_layer("und")[0])
    np.testing.assert_allclose(lines_by_label(gen_ax)["target gen"].get_ydata(), targets.per_layer("gen")[0])
    np.testing.assert_allclose(lines_by_label(gen_ax)["A gen"].get_ydata(), gen.mean)

    # The +-std band of profile A: its polygon spans exactly mean-std .. mean+std.
    verts = band(und_ax, 0)
    lo, hi = und_a.mean - und_a.std, und_a.mean + und_a.std
    assert verts[:, 1].min() == pytest.approx(lo.min()) and verts[:, 1].max() == pytest.approx(hi.max())
    assert set(np.round(verts[:, 1], 12)) >= set(np.round(np.concatenate([lo, hi]), 12))
    # The +-delta band of the targets (third collection: after the two profile bands).
    t, d = map(np.asarray, targets.per_layer("und"))
    tverts = band(und_ax, 2)
    assert set(np.round(tverts[:, 1], 12)) >= set(np.round(np.concatenate([t - d, t + d]), 12))
    legend = [t.get_text() for t in und_ax.get_legend().get_texts()]
    assert {"A und", "B und", "target und"} <= set(legend)


def test_plot_profiles_without_targets_and_default_labels(tmp_path):
    p = profile("gen", "tiny", L=4, n=3)
    res = plot_profiles([p], None, None, tmp_path / "out" / "g")
    assert [q.name for q in res.paths] == ["g.png", "g.svg"] and all(q.exists() for q in res.paths)
    (ax,) = res.figure.axes
    assert [line.get_label() for line in ax.lines] == ["tiny (n=3)"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), p.mean)


def test_plot_profiles_errors(tmp_path):
    with pytest.raises(ValueError, match=r"targets 'janus-pro' have 30 layers but profile 'x \(n=6\)' has 24"):
        plot_profiles([profile("und", "x", L=24)], None, TargetProfile.preset("janus-pro"), tmp_path / "f")
    with pytest.raises(ValueError, match="2 labels for 1 profiles"):
        plot_profiles([profile("und", "x")], ["a", "b"], None, tmp_path / "f")
    with pytest.raises(ValueError, match="at least one profile"):
        plot_profiles([], None, None, tmp_path / "f")
    assert not list(tmp_path.iterdir())


def test_plot_losses_data(tmp_path):
    base = [{"step": s, "loss/ntp": 3.0 - 0.1 * s, "loss/ntp/und": 2.0 - 0.1 * s} for s in range(1, 6)]
    aia = [{"step": s, "loss/ntp": 3.1 - 0.1 * s, "loss/aia/und": 0.5 / s} for s in range(1, 6)]
    aia[2]["loss/ntp/gen"] = 4.0  # logged at one step only
    aia.append({"summary": True, "loss/ntp": 0.0})  # no step: ignored
    runs = {"baseline": write_jsonl(tmp_path / "b" / "metrics.jsonl", base), "aia": tmp_path / "a"}
    write_jsonl(tmp_path / "a" / "metrics.jsonl", aia)

    res = plot_losses(runs, tmp_path / "loss", key="ntp")
    assert [p.name for p in res.paths] == ["loss.png", "loss.svg"] and all(p.exists() for p in res.paths)
    titles = [ax.get_title() for ax in res.figure.axes]
    assert titles == ["loss/ntp", "loss/ntp/gen", "loss/ntp/und"]
    ntp = lines_by_label(res.figure.axes[0])
    np.testing.assert_allclose(ntp["baseline"].get_ydata(), [r["loss/ntp"] for r in base])
    np.testing.assert_allclose(ntp["aia"].get_ydata(), [r["loss/ntp"] for r in aia[:5]])
    np.testing.assert_array_equal(ntp["aia"].get_xdata(), [1, 2, 3, 4, 5])
    gen = lines_by_label(res.figure.axes[1])
    assert set(gen) == {"aia"}
    assert list(gen["aia"].get_xdata()) == [3] and list(gen["aia"].get_ydata()) == [4.0]
    und = lines_by_label(res.figure.axes[2])
    assert set(und) == {"baseline"}

    fig = build_losses_figure(runs, key="aia")
    assert [ax.get_title() for ax in fig.axes] == ["loss/aia/und"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.5 / s for s in range(1, 6)])
    assert len(build_losses_figure(runs, key=None).axes) == 4


def test_plot_losses_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty}: no logged steps"):
        plot_losses({"e": empty}, tmp_path / "x")
    nostep = write_jsonl(tmp_path / "nostep.jsonl", [{"loss/ntp": 1.0}])
    with pytest.raises(ValueError, match=f"{nostep}: no logged steps"):
        build_losses_figure({"n": nostep})
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match=f"{broken}: line 2: invalid JSON"):
        build_losses_figure({"b": broken})
    with pytest.raises(ValueError, match="no such metrics file"):
        build_losses_figure({"m": tmp_path / "missing"})
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"step": 1, "loss/ntp": 1.0}])
    with pytest.raises(ValueError, match=r"no run logged a loss key matching 'aia'; loss keys present: \['loss/ntp'\]"):
        build_losses_figure({"ok": ok}, key="aia")


def test_profile_titles_say_how_it_was_measured():
    from aia.measure.profile import IntensityProfile
    from aia.plots import build_profiles_figure, protocol_text

    spans = {"image_markers_are_image": False, "question_in_query": False, "predictive": False, "gen_keys": "text"}
    gen = IntensityProfile.from_per_sample(
        "m", "gen", [[0.3, 0.4]], mode="decode",
        settings={"spans": spans, "decoding": "multinomial", "temperature": 1.0, "cfg_weight": 5.0, "seed": 0},
    )
    und = IntensityProfile.from_per_sample(
        "m", "und", [[0.1, 0.2]], mode="decode",
        settings={"spans": {**spans, "predictive": True}, "decoding": "greedy", "max_new_tokens": 512},
    )
    assert protocol_text(gen) == "decode, sampled T=1.0 CFG 5.0 seed 0, own-position queries, keys=text"
    assert protocol_text(und) == "decode, greedy, <= 512 tokens, predictive queries"
    assert protocol_text(IntensityProfile.from_per_sample("m", "und", [[0.1]])) == "teacher"  # an older file
    titles = [ax.get_title() for ax in build_profiles_figure([gen, und]).axes]
    assert protocol_text(gen) in titles[0] and protocol_text(und) in titles[1]


def segments(line):
    """The (step, value) runs of a line, split at its NaN gaps."""
    out, cur = [], []
    for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
        if np.isnan(x):
            out.append(cur)
            cur = []
        else:
            cur.append((x, y))
    return [*out, cur]


def test_plot_losses_one_task_per_step_draws_each_task_at_its_own_steps(tmp_path):
    # data.mixing=random: each step trains one task; the task's keys are logged only at its steps.
    order = ["gen", "gen", "und", "gen", "und", "und", "gen"]
    rows = []
    for step, task in enumerate(order, start=1):
        value = (1.0 if task == "gen" else 5.0) + 0.01 * step
        rows.append({"step": step, "loss/ntp": value, f"loss/ntp/{task}": value})
    # mixing=both: every step trains both tasks; the total is drawn at every step.
    both = [{"step": s, "loss/ntp": 2.0, "loss/ntp/gen": 1.0, "loss/ntp/und": 3.0} for s in range(1, 8)]
    only_und = [{"step": s, "loss/ntp": 3.0, "loss/ntp/und": 3.0} for s in range(1, 8)]
    runs = {
        "random": write_jsonl(tmp_path / "r.jsonl", rows),
        "both": write_jsonl(tmp_path / "b.jsonl", both),
        "und": write_jsonl(tmp_path / "u.jsonl", only_und),
    }
    fig = build_losses_figure(runs, key="ntp")
    total, gen, und = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["loss/ntp", "loss/ntp/gen", "loss/ntp/und"]
    # No line joins step 2 to step 4 over the und step 3; step 7 stands alone with a marker.
    assert segments(lines_by_label(gen)["random"]) == [[(1, 1.01), (2, 1.02)], [(4, 1.04)], [(7, 1.07)]]
    assert segments(lines_by_label(und)["random"]) == [[(3, 5.03)], [(5, 5.05), (6, 5.06)]]
    assert lines_by_label(gen)["random"].get_marker() not in (None, "None", "", " ")
    # The total zig-zags between the two tasks under one task per step: not drawn for that run.
    assert set(lines_by_label(total)) == {"both", "und"}
    assert segments(lines_by_label(total)["both"]) == [[(s, 2.0) for s in range(1, 8)]]
    # One colour per run in every panel, whichever runs a panel holds.
    for ax in fig.axes:
        for name, line in lines_by_label(ax).items():
            assert line.get_color() == {"random": "C0", "both": "C1", "und": "C2"}[name], (ax.get_title(), name)

    # Only one-task-per-step runs: no total panel at all.
    fig = build_losses_figure({"random": runs["random"]}, key="ntp")
    assert [ax.get_title() for ax in fig.axes] == ["loss/ntp/gen", "loss/ntp/und"]
