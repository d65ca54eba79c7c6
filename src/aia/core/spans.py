"""Query/key spans of the AIA statistic, built from per-position token roles.

Every adapter labels each position of the language model's sequence with a
:class:`Role`. The spans of paper Eq. 1 are then pure functions of those labels:

==========================  ==============================  ======================================
task                        queries Q                       keys K
==========================  ==============================  ======================================
generation (text->image)    image tokens (being predicted)  every text position before the image
                                                            (BOS, chat template, prompt)
understanding (image->text) answer tokens (every turn)      image tokens
==========================  ==============================  ======================================

Each choice the paper leaves open is a field of :class:`SpanConfig`; the defaults follow
the released training code (``trainer/trainer_t2i.py``; see ``docs/FIDELITY.md`` for the
lines), without its off-by-one slips at the span edges:

* generation keys (``gen_keys``): the released code slices the keys as every position
  before ``<begin_of_image>`` (BOS, template and prompt); the paper's text says "all text
  tokens". ``text+boi`` adds ``<begin_of_image>`` as the released plot script does;
  ``prompt`` keeps the prompt's own text only;
* image framing tokens (``<begin_of_image>``, end-of-line, ``<end_of_image>``) are not
  image tokens (``image_markers_are_image`` makes them so, in Q for generation and in K
  for understanding);
* the understanding query set is the answers only (released code), not the question
  (``question_in_query``);
* queries are the positions that hold the span's tokens (``predictive`` shifts them one
  to the left).

Padding never belongs to a span. Whether a sample carries an AIA term at all is not a
span question: a generation sample whose prompt was blanked for classifier-free guidance
is flagged by its adapter (``Example.cfg_blank``) and its query set is emptied at
collation, whatever its key set.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import torch

__all__ = ["GEN_KEYS", "TASKS", "Role", "SpanConfig", "check_task", "generation_spans", "understanding_spans", "task_spans"]

#: the two tasks: understanding (image -> text) and generation (text -> image)
TASKS: tuple[str, ...] = ("und", "gen")


def check_task(task: str) -> str:
    """``task`` if it is one of :data:`TASKS`, else a ValueError naming it."""
    if task not in TASKS:
        raise ValueError(f"task must be 'und' or 'gen', got {task!r}")
    return task


class Role(IntEnum):
    """What one sequence position holds."""

    PAD = 0  #: padding (never in a span)
    TEMPLATE = 1  #: BOS, chat-template and role tokens, separators, EOS
    PROMPT = 2  #: user text: the generation prompt or the understanding question
    IMAGE = 3  #: one image token (a VQ code or a vision-encoder feature slot)
    IMAGE_MARKER = 4  #: begin/end-of-image, end-of-line and similar image framing tokens
    ANSWER = 5  #: assistant answer text (the supervised tokens)


@dataclass(frozen=True)
class SpanConfig:
    """Choices the paper leaves open (each field's text is also its CLI and config help)."""

    image_markers_are_image: bool = False
    """Count image framing tokens (begin/end of image, end-of-line) as image tokens, in Q for
    generation and in K for understanding."""
    question_in_query: bool = False
    """Understanding only: the question's tokens join the answer tokens in Q."""
    predictive: bool = False
    """Use as queries the positions that predict the span tokens (one to the left, as in cached
    decoding, where the query of image token i is token i-1) instead of the positions holding them."""
    gen_keys: str = "text"
    """Generation key set: ``text`` = every real text position before the image's first token
    (BOS, chat template, prompt), as the released training code slices it; ``text+boi`` = that
    and the begin-of-image token, as the released plot script does; ``prompt`` = the prompt's
    own text only."""

    def __post_init__(self):
        if self.gen_keys not in GEN_KEYS:
            raise ValueError(f"gen_keys must be one of {', '.join(GEN_KEYS)}; got {self.gen_keys!r}")


GEN_KEYS = ("text", "text+boi", "prompt")


def _image_mask(roles: torch.Tensor, cfg: SpanConfig) -> torch.Tensor:
    mask = roles == Role.IMAGE
    if cfg.image_markers_are_image:
        mask = mask | (roles == Role.IMAGE_MARKER)
    return mask


def _shift_left(mask: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """Positions one to the left of ``mask``, never on padding."""
    out = torch.zeros_like(mask)
    out[:, :-1] = mask[:, 1:]
    return out & (roles != Role.PAD)


def generation_spans(roles: torch.Tensor, cfg: SpanConfig = SpanConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans of the generation task.

    Args:
        roles: ``[B, T]`` integer tensor of :class:`Role` values.
        cfg: span choices.

    Returns:
        ``(query_mask, key_mask)``, bool ``[B, T]``: Q = image tokens, K = the
        prompt's text tokens.
    """
    query = _image_mask(roles, cfg)
    if cfg.predictive:
        query = _shift_left(query, roles)
    if cfg.gen_keys == "prompt":
        return query, roles == Role.PROMPT
    image_like = (roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)
    before_image = image_like.long().cumsum(-1) == 0  # [B, T]: up to the image's first token
    key = before_image & ((roles == Role.TEMPLATE) | (roles == Role.PROMPT))
    if cfg.gen_keys == "text+boi":
        first = image_like & (image_like.long().cumsum(-1) == 1)
        key = key | (first & (roles == Role.IMAGE_MARKER))
    return query, key


def understanding_spans(roles: torch.Tensor, cfg: SpanConfig = SpanConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans of the understanding task.

    Args:
        roles: ``[B, T]`` integer tensor of :class:`Role` values.
        cfg: span choices.

    Returns:
        ``(query_mask, key_mask)``, bool ``[B, T]``: Q = answer tokens (plus the
        question if ``cfg.question_in_query``), K = image tokens.
    """
    query = roles == Role.ANSWER
    if cfg.question_in_query:
        query = query | (roles == Role.PROMPT)
    if cfg.predictive:
        query = _shift_left(query, roles)
    key = _image_mask(roles, cfg)
    return query, key


def task_spans(task: str, roles: torch.Tensor, cfg: SpanConfig = SpanConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans for ``task`` (``"gen"`` or ``"und"``)."""
    return generation_spans(roles, cfg) if check_task(task) == "gen" else understanding_spans(roles, cfg)
