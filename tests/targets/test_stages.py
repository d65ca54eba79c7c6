"""Stage derivation: exact segmentation, targets and deltas from profiles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from aia.measure.profile import IntensityProfile
from aia.targets.presets import TargetProfile
from aia.targets.stages import MIN_DELTA, derive_stages, derive_targets, segment


def sse(curve, bounds):
    return sum(((curve[a:b] - curve[a:b].mean()) ** 2).sum() for a, b in bounds)


def brute_force(curve, k):
    """Every placement of k-1 cut points; the minimal within-stage SSE."""
    L = len(curve)
    return min(
        sse(curve, list(zip((0, *cuts), (*cuts, L), strict=True)))
        for cuts in itertools.combinations(range(1, L), k - 1)
    )


def staged_profile(levels, lengths, n=50, noise=0.01, task="und", seed=0):
    rng = np.random.default_rng(seed)
    curve = np.repeat(levels, lengths)
    per_sample = curve + noise * rng.standard_normal((n, curve.size))
    return IntensityProfile.from_per_sample("ref", task, per_sample)


def test_segment_recovers_known_boundaries():
    profile = staged_profile([0.1, 0.3, 0.5, 0.2], [7, 9, 5, 3])
    assert segment(profile.mean, 4) == [(0, 7), (7, 16), (16, 21), (21, 24)]
    # Non-monotone levels with a one-layer stage at the end.
    profile = staged_profile([0.4, 0.05, 0.25, 0.6], [3, 12, 14, 1], seed=1)
    assert segment(profile.mean, 4) == [(0, 3), (3, 15), (15, 29), (29, 30)]


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_segment_is_optimal_against_brute_force(seed, k):
    curve = np.random.default_rng(seed).random(11)
    bounds = segment(curve, k)
    assert len(bounds) == k and bounds[0][0] == 0 and bounds[-1][1] == 11
    assert all(a < b for a, b in bounds) and all(bounds[i][1] == bounds[i + 1][0] for i in range(k - 1))
    assert sse(curve, bounds) == pytest.approx(brute_force(curve, k), rel=1e-12, abs=1e-15)


def test_segment_flat_curve_is_balanced():
    bounds = segment(np.full(30, 0.3), 4)
    sizes = [b - a for a, b in bounds]
    assert sum(sizes) == 30 and max(sizes) - min(sizes) <= 1
    profile = IntensityProfile.from_per_sample("flat", "gen", np.full((5, 30), 0.3))
    stages = derive_stages(profile, 4)
    assert [s.target for s in stages] == pytest.approx([0.3] * 4)
    assert [s.delta for s in stages] == [MIN_DELTA] * 4  # no spread: the floor


def test_segment_stage_count_errors():
    with pytest.raises(ValueError, match="stages=6 is more than the 5 layers"):
        segment(np.zeros(5), 6)
    with pytest.raises(ValueError, match="stages must be a positive integer, got 0"):
        segment(np.zeros(5), 0)
    assert segment(np.arange(5.0), 5) == [(i, i + 1) for i in range(5)]
    assert segment(np.arange(5.0), 1) == [(0, 5)]


def test_stage_targets_and_deltas():
    rng = np.random.default_rng(3)
    curve = np.repeat([0.1, 0.4], [4, 6])
    per_sample = curve + rng.normal(0, [[0.02] * 4 + [0.08] * 6], size=(200, 10))
    profile = IntensityProfile.from_per_sample("ref", "und", per_sample)
    stages = derive_stages(profile, 2, c=1.5, min_delta=0.001)
    assert [(s.start, s.end) for s in stages] == [(0, 4), (4, 10)]
    for s in stages:
        block = per_sample[:, s.start : s.end]
        assert s.target == pytest.approx(block.mean())
        assert s.delta == pytest.approx(1.5 * np.sqrt(((block - block.mean()) ** 2).mean()))
    assert stages[0].delta == pytest.approx(1.5 * 0.02, rel=0.15)
    assert stages[1].delta == pytest.approx(1.5 * 0.08, rel=0.15)


def test_per_layer_ablation():
    profile = staged_profile([0.1, 0.3], [3, 3], n=20)
    stages = derive_stages(profile, per_layer=True, min_delta=1e-6)
    assert [(s.start, s.end) for s in stages] == [(i, i + 1) for i in range(6)]
    assert [s.target for s in stages] == pytest.approx(profile.mean.tolist())
    assert [s.delta for s in stages] == pytest.approx(profile.std.tolist())


def test_derive_targets_both_tasks_and_fallback():
    und = staged_profile([0.1, 0.15, 0.3], [10, 8, 6], task="und")
    gen = staged_profile([0.4, 0.2], [20, 4], task="gen", seed=2)
    both = derive_targets(gen, und, stages=3, name="mine")
    assert both.name == "mine" and both.num_layers == 24
    assert [(s.start, s.end) for s in both.tasks["und"]] == [(0, 10), (10, 18), (18, 24)]
    assert both.per_layer("und")[0][0] == pytest.approx(und.mean[:10].mean())
    # A task without a profile comes from the fallback, resized to the profile's depth.
    only_und = derive_targets(None, und, stages=3, fallback="janus-pro")
    assert only_und.tasks["gen"] == TargetProfile.preset("janus-pro").resize(24).tasks["gen"]
    assert only_und.tasks["und"] == both.tasks["und"]
    assert "resized 30->24" in only_und.source
    with pytest.raises(ValueError, match="no gen profile given and no fallback"):
        derive_targets(None, und)
    with pytest.raises(ValueError, match="at least one profile"):
        derive_targets(None, None, fallback="emu3")
    with pytest.raises(ValueError, match="measured on task 'und'"):
        derive_targets(und, None, fallback="emu3")
    # References of different depths (Qwen-VL and GLM-Image): each task's stages on its own depth, mapped
    # by relative depth to the deeper one, or to num_layers
    deep = staged_profile([0.4, 0.2], [20, 10], task="gen", seed=2)
    mixed = derive_targets(deep, und, stages=2)
    assert mixed.num_layers == 30 and "und: " in mixed.source and "resized 24->30" in mixed.source
    alone = derive_targets(deep, None, stages=2, fallback="emu3")
    assert mixed.tasks["gen"] == alone.tasks["gen"]  # the deeper reference's stages, unchanged
    assert mixed.per_layer("und")[0] == TargetProfile(
        "x", 24, {t: derive_targets(None, und, stages=2, fallback="emu3").tasks["und"] for t in ("und", "gen")}
    ).resize(30).per_layer("und")[0]
    to_16 = derive_targets(deep, und, stages=2, num_layers=16)
    assert to_16.num_layers == 16 and to_16.tasks["gen"] == mixed.resize(16).tasks["gen"]
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        derive_targets(gen, und, num_layers=0)
    with pytest.raises(ValueError, match="stages=25 is more than the 24 layers"):
        derive_targets(gen, und, stages=25)


def test_derived_targets_roundtrip_yaml(tmp_path):
    und = staged_profile([0.1, 0.3], [5, 5], task="und")
    gen = staged_profile([0.5, 0.2], [2, 8], task="gen")
    targets = derive_targets(gen, und, stages=2)
    assert TargetProfile.from_yaml(targets.to_yaml(tmp_path / "t.yaml")) == targets
