"""The generation key set (SpanConfig.gen_keys) on hand-made role sequences."""

import pytest
import torch

from aia.core.spans import Role, SpanConfig, generation_spans

P, T, I, M, X = Role.PROMPT, Role.TEMPLATE, Role.IMAGE, Role.IMAGE_MARKER, Role.PAD  # noqa: E741


def pos(mask, row=0):
    return mask[row].nonzero().flatten().tolist()


def test_text_keys_are_every_real_text_position_before_the_image():
    #                      0  1  2  3  4  5  6  7  8  9 10
    roles = torch.tensor([[X, T, T, P, P, T, M, I, I, M, T]])  # left pad, BOS, "User:", prompt, "Assistant:", <boi>
    _, k = generation_spans(roles, SpanConfig(gen_keys="text"))
    assert pos(k) == [1, 2, 3, 4, 5]  # BOS, template and prompt; not <boi>, not what follows the image
    _, k = generation_spans(roles, SpanConfig(gen_keys="text+boi"))
    assert pos(k) == [1, 2, 3, 4, 5, 6]  # the released plot script's set
    _, k = generation_spans(roles, SpanConfig(gen_keys="prompt"))
    assert pos(k) == [3, 4]


def test_text_keys_do_not_depend_on_markers_or_query_choices():
    roles = torch.tensor([[T, P, P, T, M, M, I, I, M, I, I, M, T]])  # Emu3-like: <boi>, h*w header, rows, <eoi>
    for cfg in (SpanConfig(gen_keys="text"), SpanConfig(gen_keys="text", image_markers_are_image=True),
                SpanConfig(gen_keys="text", predictive=True)):
        _, k = generation_spans(roles, cfg)
        assert pos(k) == [0, 1, 2, 3]
    _, k = generation_spans(roles, SpanConfig(gen_keys="text+boi"))
    assert pos(k) == [0, 1, 2, 3, 4]  # <boi> only, not the header after it


def test_text_keys_per_row_of_a_padded_batch():
    roles = torch.tensor([[T, P, T, M, I, I, X, X], [X, X, T, T, M, I, I, M]])
    _, k = generation_spans(roles, SpanConfig(gen_keys="text"))
    assert pos(k, 0) == [0, 1, 2] and pos(k, 1) == [2, 3]


def test_unknown_gen_keys_is_refused():
    with pytest.raises(ValueError, match="gen_keys must be one of text, text\\+boi, prompt; got 'all'"):
        SpanConfig(gen_keys="all")
