"""Span masks from roles, on hand-made sequences."""

import torch

from aia.core.spans import Role, SpanConfig, generation_spans, task_spans, understanding_spans

P, T, I, M, A, X = Role.PROMPT, Role.TEMPLATE, Role.IMAGE, Role.IMAGE_MARKER, Role.ANSWER, Role.PAD  # noqa: E741


def pos(mask):
    return mask[0].nonzero().flatten().tolist()


def test_generation_spans_exact_edges():
    #              0  1  2  3  4  5  6  7  8  9
    roles = torch.tensor([[T, P, P, P, T, M, I, I, I, X]])
    q, k = generation_spans(roles)
    assert pos(q) == [6, 7, 8] and pos(k) == [0, 1, 2, 3, 4]  # default keys: all text before the image
    _, k = generation_spans(roles, SpanConfig(gen_keys="prompt"))
    assert pos(k) == [1, 2, 3]
    q, _ = generation_spans(roles, SpanConfig(image_markers_are_image=True))
    assert pos(q) == [5, 6, 7, 8]
    q, _ = generation_spans(roles, SpanConfig(predictive=True))
    assert pos(q) == [5, 6, 7]  # the positions predicting image tokens 6..8


def test_understanding_spans_multi_turn_and_padding():
    #                    0  1  2  3  4  5  6  7  8  9 10 11 12 13
    roles = torch.tensor([[X, X, T, M, I, I, M, P, T, A, A, T, P, A]])
    q, k = understanding_spans(roles)
    assert pos(q) == [9, 10, 13] and pos(k) == [4, 5]
    q, _ = understanding_spans(roles, SpanConfig(question_in_query=True))
    assert pos(q) == [7, 9, 10, 12, 13]
    _, k = understanding_spans(roles, SpanConfig(image_markers_are_image=True))
    assert pos(k) == [3, 4, 5, 6]


def test_predictive_shift_never_lands_on_padding():
    roles = torch.tensor([[X, T, P, T, A, A]])
    q, _ = understanding_spans(roles, SpanConfig(predictive=True))
    assert pos(q) == [3, 4]
    roles = torch.tensor([[I, I, T]])
    q, _ = generation_spans(roles, SpanConfig(predictive=True))
    assert pos(q) == [0]


def test_blanked_prompt_has_empty_prompt_key_set():
    roles = torch.tensor([[T, T, T, T, M, I, I]])
    q, k = task_spans("gen", roles, SpanConfig(gen_keys="prompt"))
    assert q.any() and not k.any()
    _, k = task_spans("gen", roles)  # text keys remain: whether the sample carries a term is its cfg_blank flag
    assert pos(k) == [0, 1, 2, 3]
