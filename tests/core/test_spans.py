"""Span masks from roles, on hand-made sequences."""

import pytest
import torch

from aia.core.spans import SPAN_CHOICES, Role, SpanConfig, generation_spans, task_spans, understanding_spans

P, T, I, M, A, X = Role.PROMPT, Role.TEMPLATE, Role.IMAGE, Role.IMAGE_MARKER, Role.ANSWER, Role.PAD  # noqa: E741

#: the sets aia used before the released ones became the defaults
ALL_IMAGE = SpanConfig(gen_queries="image", und_queries="answer", und_keys="image")


def pos(mask, row=0):
    return mask[row].nonzero().flatten().tolist()


def test_generation_spans_exact_edges():
    #              0  1  2  3  4  5  6  7  8  9
    roles = torch.tensor([[T, P, P, P, T, M, I, I, I, X]])
    q, k = generation_spans(roles)
    # default (released, trainer_t2i.py:187): codes 0..N-2; keys: all text before the image
    assert pos(q) == [6, 7] and pos(k) == [0, 1, 2, 3, 4]
    q, _ = generation_spans(roles, ALL_IMAGE)
    assert pos(q) == [6, 7, 8]
    _, k = generation_spans(roles, SpanConfig(gen_keys="prompt"))
    assert pos(k) == [1, 2, 3]
    q, _ = generation_spans(roles, SpanConfig(gen_queries="image", image_markers_are_image=True))
    assert pos(q) == [5, 6, 7, 8]
    q, _ = generation_spans(roles, SpanConfig(gen_queries="image", predictive=True))
    assert pos(q) == [5, 6, 7]  # the positions predicting image tokens 6..8


def test_generation_queries_drop_the_last_code_not_a_closing_marker():
    #                      0  1  2  3  4  5  6  7  8  9 10 11
    roles = torch.tensor([[X, T, P, M, M, I, I, M, I, I, M, M]])  # Emu3-like: rows with end-of-line, closing markers
    q, _ = generation_spans(roles)
    assert pos(q) == [5, 6, 8]
    q, _ = generation_spans(roles, SpanConfig(image_markers_are_image=True))
    assert pos(q) == [3, 4, 5, 6, 7, 8, 10, 11]


def test_understanding_spans_multi_turn_and_padding():
    #                    0  1  2  3  4  5  6  7  8  9 10 11 12 13 14
    roles = torch.tensor([[X, X, T, M, I, I, M, P, T, A, A, T, P, A, T]])
    q, k = understanding_spans(roles)
    # default (released): every answer and the eos closing the last one (t2i_dataset.py:168-175);
    # keys: <begin_of_image> and the image tokens but the last (t2i_dataset.py:158)
    assert pos(q) == [9, 10, 13, 14] and pos(k) == [3, 4]
    q, k = understanding_spans(roles, ALL_IMAGE)
    assert pos(q) == [9, 10, 13] and pos(k) == [4, 5]
    _, k = understanding_spans(roles, SpanConfig(und_keys="boi+image"))
    assert pos(k) == [3, 4, 5]  # the released plot script's set (und_plot.py:67-68,95)
    q, _ = understanding_spans(roles, SpanConfig(und_queries="answer", question_in_query=True))
    assert pos(q) == [7, 9, 10, 12, 13]
    _, k = understanding_spans(roles, SpanConfig(und_keys="image", image_markers_are_image=True))
    assert pos(k) == [3, 4, 5, 6]


def test_final_eos_is_the_token_after_the_last_answer_only():
    # released format: no eos between turns, the next turn's BOS follows an answer (turn_separator="bos")
    #                      0  1  2  3  4  5  6  7  8  9 10 11
    roles = torch.tensor([[T, M, I, I, M, T, A, T, P, T, A, T], [T, M, I, I, M, T, A, A, X, X, X, X]])
    q, _ = understanding_spans(roles)
    assert pos(q, 0) == [6, 10, 11]
    assert pos(q, 1) == [6, 7]  # an answer cut short has no closing token: nothing is added


def test_image_blocks_are_found_per_image():
    #                      0  1  2  3  4  5  6  7  8  9 10
    roles = torch.tensor([[T, M, I, I, M, P, M, I, I, M, A]])
    _, k = understanding_spans(roles)
    assert pos(k) == [1, 2, 6, 7]  # per image: its opening marker, not its last image token


def test_predictive_shift_never_lands_on_padding():
    roles = torch.tensor([[X, T, P, T, A, A]])
    q, _ = understanding_spans(roles, SpanConfig(predictive=True))
    assert pos(q) == [3, 4]
    roles = torch.tensor([[I, I, T]])
    q, _ = generation_spans(roles, SpanConfig(gen_queries="image", predictive=True))
    assert pos(q) == [0]


def test_blanked_prompt_has_empty_prompt_key_set():
    roles = torch.tensor([[T, T, T, T, M, I, I]])
    q, k = task_spans("gen", roles, SpanConfig(gen_keys="prompt"))
    assert q.any() and not k.any()
    _, k = task_spans("gen", roles)  # text keys remain: whether the sample carries a term is its cfg_blank flag
    assert pos(k) == [0, 1, 2, 3]


def test_choices_are_checked_and_the_first_is_the_default():
    defaults = SpanConfig()
    for name, values in SPAN_CHOICES.items():
        assert getattr(defaults, name) == values[0]
        with pytest.raises(ValueError, match=f"{name} must be one of"):
            SpanConfig(**{name: "nonsense"})
