"""Target profiles: presets against the paper's tables, relative-depth mapping, YAML I/O."""

from __future__ import annotations

import re

import pytest
import torch
import yaml

from aia.targets.presets import PRESETS, Stage, TargetProfile, preset_names

# Paper Tables S4/S5 written out independently of the module, as printed:
# (first layer, last layer inclusive) -> ((delta, T) generation, (delta, T) understanding).
EMU3_TABLE = [
    ((0, 9), (0.20, 0.40), (0.05, 0.10)),
    ((10, 19), (0.10, 0.40), (0.05, 0.15)),
    ((20, 24), (0.10, 0.40), (0.05, 0.30)),
    ((25, 30), (0.05, 0.20), (0.05, 0.30)),
    ((31, 31), (0.05, 0.20), (0.05, 0.20)),  # "l > 30"
]
JANUS_TABLE = [
    ((0, 9), (0.20, 0.40), (0.05, 0.10)),
    ((10, 19), (0.10, 0.40), (0.05, 0.15)),
    ((20, 24), (0.10, 0.40), (0.05, 0.30)),
    ((25, 29), (0.05, 0.20), (0.05, 0.30)),
    # "l > 29": no layer at 30 layers.
]


def expected_per_layer(table, num_layers, task_col):
    targets, deltas = [None] * num_layers, [None] * num_layers
    for (lo, hi), gen, und in table:
        delta, t = gen if task_col == "gen" else und
        for layer in range(lo, hi + 1):
            targets[layer], deltas[layer] = t, delta
    assert None not in targets
    return targets, deltas


@pytest.mark.parametrize("name,table,num_layers", [("emu3", EMU3_TABLE, 32), ("janus-pro", JANUS_TABLE, 30)])
@pytest.mark.parametrize("task", ["gen", "und"])
def test_preset_matches_paper_table_every_layer(name, table, num_layers, task):
    profile = TargetProfile.preset(name)
    assert profile.num_layers == num_layers
    want_t, want_d = expected_per_layer(table, num_layers, task)
    got_t, got_d = profile.per_layer(task)
    assert got_t == want_t
    assert got_d == want_d
    t, d = profile.tensors(task, dtype=torch.float64)
    assert t.shape == d.shape == (num_layers,)
    assert t.tolist() == want_t and d.tolist() == want_d


def test_preset_rows_are_the_table_rows():
    janus = TargetProfile.preset("janus-pro")
    assert [(s.start, s.end) for s in janus.tasks["und"]] == [(0, 10), (10, 20), (20, 25), (25, 30)]
    emu3 = TargetProfile.preset("Emu3")
    assert [(s.start, s.end) for s in emu3.tasks["gen"]] == [(0, 10), (10, 20), (20, 25), (25, 31), (31, 32)]
    assert set(preset_names()) == set(PRESETS) == {"emu3", "janus-pro", "janus-pro-released"}
    with pytest.raises(ValueError, match="unknown target preset 'bagel'"):
        TargetProfile.preset("bagel")


def test_resize_janus_to_24_layers_by_layer_centres():
    src = TargetProfile.preset("janus-pro")
    small = src.resize(24)
    assert small.num_layers == 24
    for task in ("gen", "und"):
        st, sd = src.per_layer(task)
        t, d = small.per_layer(task)
        for layer in range(24):
            centre = (layer + 0.5) / 24  # relative depth of the layer centre
            j = int(centre * 30)
            assert (t[layer], d[layer]) == (st[j], sd[j])
    # Stage edges scale by 24/30 and equal neighbours merge.
    assert [(s.start, s.end, s.target) for s in small.tasks["und"]] == [(0, 8, 0.10), (8, 16, 0.15), (16, 24, 0.30)]
    assert [(s.start, s.end, s.delta) for s in small.tasks["gen"]] == [(0, 8, 0.20), (8, 20, 0.10), (20, 24, 0.05)]


def test_resize_up_and_identity():
    src = TargetProfile.preset("emu3")
    assert src.resize(32) is src
    big = src.resize(64)
    t, _ = big.per_layer("und")
    st, _ = src.per_layer("und")
    assert t == [st[layer // 2] for layer in range(64)]  # centre of layer l lies in source layer l // 2
    # Every new layer maps into range; depth 1 takes the middle layer.
    one = src.resize(1)
    assert one.per_layer("und") == ([st[16]], [0.05])
    with pytest.raises(ValueError, match="positive integer"):
        src.resize(0)


def test_yaml_roundtrip(tmp_path):
    for name in PRESETS:
        src = TargetProfile.preset(name).resize(24)
        path = src.to_yaml(tmp_path / f"{name}.yaml")
        back = TargetProfile.from_yaml(path)
        assert back == src
        assert back.source == src.source
        raw = yaml.safe_load(path.read_text())
        assert list(raw) == ["name", "num_layers", "source", "und", "gen"]
        first = 7 if name == "emu3" else 8  # emu3: layer 7's centre lies in source layer 10
        assert raw["und"][0] == {"layers": [0, first], "target": 0.1, "delta": 0.05}


def test_load_preset_or_file(tmp_path):
    assert TargetProfile.load("janus-pro") == TargetProfile.preset("janus-pro")
    assert TargetProfile.load("janus-pro", num_layers=24) == TargetProfile.preset("janus-pro").resize(24)
    path = TargetProfile.preset("emu3").to_yaml(tmp_path / "t.yaml")
    assert TargetProfile.load(path) == TargetProfile.preset("emu3")
    with pytest.raises(ValueError, match="neither a preset"):
        TargetProfile.load(tmp_path / "missing.yaml")


GOOD = {
    "name": "x",
    "num_layers": 4,
    "gen": [{"layers": [0, 2], "target": 0.4, "delta": 0.2}, {"layers": [2, 4], "target": 0.2, "delta": 0.05}],
    "und": [{"layers": [0, 4], "target": 0.1, "delta": 0.05}],
}


def bad(**changes):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    for dotted, value in changes.items():
        *head, last = dotted.split("__")
        node = data
        for part in head:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return data


@pytest.mark.parametrize(
    "data,message",
    [
        (bad(gen__1__delta=-0.1), re.escape("targets.yaml: gen[1].delta must be > 0, got -0.1")),
        (bad(gen__1__delta=0), r"gen\[1\].delta must be > 0, got 0"),
        (bad(und__0__target=1.5), r"und\[0\].target must be in \[0, 1\], got 1.5"),
        (bad(und__0__target="high"), r"und\[0\].target must be a number, got 'high'"),
        (bad(gen__0__delta=True), r"gen\[0\].delta must be a number"),
        (bad(und=KeyError), "missing required key 'und'"),
        (bad(num_layers=KeyError), "missing required key 'num_layers'"),
        (bad(num_layers="4"), "num_layers must be an integer"),
        (bad(gen__1__layers=[3, 4]), r"gen\[1\].layers starts at 3: gap, layers 2..2 have no stage"),
        (bad(gen__1__layers=[1, 4]), r"gen\[1\].layers starts at 1: overlaps"),
        (bad(gen__1__layers=[2, 5]), r"gen\[1\].layers must satisfy 0 <= start < end <= num_layers=4"),
        (bad(gen__1__layers=[2, 3]), "gen: stages end at layer 3, but num_layers=4"),
        (bad(gen__1__layers=[2]), r"gen\[1\].layers must be \[start, end\]"),
        (bad(gen__1__layers=[2.0, 4]), r"gen\[1\].layers\[0\] must be an integer"),
        (bad(gen__0__weight=1.0), r"gen\[0\] has unknown key\(s\) \['weight'\]"),
        (bad(gen__0__delta=KeyError), r"gen\[0\] is missing key\(s\) \['delta'\]"),
        (bad(extra=1), r"unknown key\(s\) \['extra'\]"),
        (bad(gen=[]), "gen must be a non-empty list"),
    ],
)
def test_bad_yaml_names_the_field(tmp_path, data, message):
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message) as info:
        TargetProfile.from_yaml(path)
    assert str(info.value).startswith(str(path) + ": ")


def test_good_dict_parses_and_not_yaml_fails(tmp_path):
    profile = TargetProfile.from_dict(GOOD)
    assert profile.per_layer("gen") == ([0.4, 0.4, 0.2, 0.2], [0.2, 0.2, 0.05, 0.05])
    path = tmp_path / "t.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        TargetProfile.from_yaml(path)
    with pytest.raises(ValueError, match="expected a mapping"):
        TargetProfile.from_dict([1, 2])


def test_constructor_validates():
    with pytest.raises(ValueError, match=r"tasks must be exactly \['und', 'gen'\]"):
        TargetProfile("x", 2, {"gen": (Stage(0, 2, 0.1, 0.1),)})
    with pytest.raises(ValueError, match=r"und\[0\].delta must be > 0"):
        TargetProfile("x", 2, {"gen": (Stage(0, 2, 0.1, 0.1),), "und": (Stage(0, 2, 0.1, 0.0),)})
    with pytest.raises(ValueError, match="unknown task 'both'"):
        TargetProfile.preset("emu3").per_layer("both")


def released_bands(task: str, layer_idx: int) -> tuple[float, float]:
    """(target, delta) of one layer as the released code's if/elif chains write them
    (models/modeling_vlm.py:295-303 generation, :330 and :346-353 understanding, zhengdian1/AIA 88aef6b)."""
    if task == "gen":
        if layer_idx < 10:
            return 0.4, 0.2
        elif layer_idx >= 10 and layer_idx < 25:
            return 0.4, 0.1
        return 0.2, 0.05
    if layer_idx < 10:
        return 0.1, 0.05
    elif layer_idx >= 10 and layer_idx <= 20:
        return 0.15, 0.05
    elif layer_idx > 20 and layer_idx <= 29:
        return 0.3, 0.05
    return 0.2, 0.05


@pytest.mark.parametrize("task", ["gen", "und"])
def test_released_preset_is_the_released_bands_every_layer(task):
    released = TargetProfile.preset("janus-pro-released")
    assert released.num_layers == 30 and "modeling_vlm.py" in released.source
    targets, deltas = released.per_layer(task)
    assert list(zip(targets, deltas, strict=True)) == [released_bands(task, layer) for layer in range(30)]
    table = TargetProfile.preset("janus-pro")
    differ = [layer for layer in range(30) if table.per_layer(task)[0][layer] != targets[layer]]
    assert differ == ([20] if task == "und" else [])  # Table S5 says 0.30 at und layer 20


@pytest.mark.parametrize("task", ["gen", "und"])
def test_by_index_applies_bands_by_absolute_layer_index(task):
    released = TargetProfile.preset("janus-pro-released")
    small = released.by_index(24)
    targets, deltas = small.per_layer(task)
    assert list(zip(targets, deltas, strict=True)) == [released_bands(task, layer) for layer in range(24)]
    deep = released.by_index(32)
    assert deep.per_layer(task)[0][30:] == [released.per_layer(task)[0][29]] * 2
    assert "by layer index" in small.source and released.by_index(30) is released
    assert TargetProfile.load("janus-pro-released", 24, layer_map="absolute") == small
    assert TargetProfile.load("janus-pro-released", 24) == released.resize(24)
    with pytest.raises(ValueError, match="layer_map must be one of relative, absolute"):
        TargetProfile.load("janus-pro", 24, layer_map="depth")


def test_the_two_24_layer_mappings_differ_in_13_layers():
    relative = TargetProfile.preset("janus-pro").resize(24)
    absolute = TargetProfile.preset("janus-pro-released").by_index(24)
    differ = [
        (task, layer)
        for task in ("gen", "und")
        for layer in range(24)
        if (relative.per_layer(task)[0][layer], relative.per_layer(task)[1][layer])
        != (absolute.per_layer(task)[0][layer], absolute.per_layer(task)[1][layer])
    ]
    assert len(differ) == 13
