"""aia answer feeds the model the adapters' prompt tokens, which equal the checkpoints' own chat
templates (tests/adapters/test_templates.py): here, against the processor's rendering."""

import pytest
from PIL import Image

from aia.adapters import get_adapter
from aia.evaluate.answer import Question, _prompts
from aia.testing import tiny_chameleon, tiny_emu3, tiny_janus

BUILDERS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_answer_prompt_is_the_adapters_and_ends_where_the_answer_starts(family, tmp_path):
    model, processor = BUILDERS[family](seed=0, num_layers=1)
    path = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 20, 20)).save(path)
    question = "Is there a red square?\nAnswer the question using a single word or phrase."
    adapter = get_adapter(model, processor, padding_side="left")
    batch, inputs = _prompts(model, adapter, [Question("q1", question, path, {}), Question("q2", "Short?", path, {})])
    ids = inputs["input_ids"]
    assert ids.shape[0] == 2 and "pixel_values" in inputs and "position_ids" not in inputs
    assert (batch.attention_mask[:, -1] == 1).all()  # left padding: every prompt ends at the last column
    assert ids[0, 0] == adapter.bos_id  # the longer prompt starts with BOS, then the template
    tail = processor.tokenizer.decode(ids[0, -6:])
    assert "Assistant" in tail or "ASSISTANT" in tail or family == "chameleon"
