"""`aia profile` (teacher forcing) on a saved tiny Janus equals the released approach, per sample and
layer: eager attention maps recorded during the same training forward, sliced by the same spans."""

import json

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.llama.modeling_llama import eager_attention_forward

from aia.adapters import get_adapter
from aia.cli import main
from aia.data import read_records
from aia.testing.tiny import tiny_janus
from tests.helpers import save_model, span_intensity

MAPS: list[torch.Tensor] = []


def _recording_eager(module, query, key, value, attention_mask, **kwargs):
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("aia_")}
    out, weights = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
    MAPS.append(weights.detach())  # [B, H, T, T]
    return out, weights


AttentionInterface.register("aia_test_recording_eager", _recording_eager)
AttentionMaskInterface.register("aia_test_recording_eager", eager_mask)  # the causal + padding mask, as eager


@pytest.mark.parametrize("task", ["und", "gen"])
def test_profile_equals_eager_maps_per_sample(tiny_data, tmp_path, task):
    model, processor = tiny_janus(seed=0)
    model_dir = save_model(model, processor, tmp_path / "model")
    data = tiny_data[0] if task == "und" else tiny_data[1]
    out = tmp_path / "p.json"
    argv = ["profile", str(model_dir), "--data", str(data), "--task", task, "--samples", "3", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    per_sample = torch.tensor(json.loads(out.read_text())["per_sample"], dtype=torch.float64)  # [N, L]

    adapter = get_adapter(model, processor)  # default spans: gen keys = BOS + template + prompt
    rows = []
    for record in read_records(data)[:3]:
        batch = adapter.collate([adapter.encode(record, task, data.parent)])
        lm = adapter.language_model(model)
        lm.config._attn_implementation = "aia_test_recording_eager"
        MAPS.clear()
        try:
            with torch.no_grad():
                adapter.forward(model, batch)
        finally:
            lm.config._attn_implementation = "sdpa"
        rows.append(span_intensity(MAPS, batch.query_mask, batch.key_mask)[:, 0])
    torch.testing.assert_close(per_sample, torch.stack(rows).double(), rtol=0, atol=1e-5)
