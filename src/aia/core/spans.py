"""Query/key spans of the AIA statistic, built from per-position token roles.

Every adapter labels each position of the language model's sequence with a
:class:`Role`. The spans of paper Eq. 1 are then pure functions of those labels:

==========================  ================================  ====================================
task                        queries Q                         keys K
==========================  ================================  ====================================
generation (text->image)    image tokens but the last         every text position before the image
                            (codes 0..N-2)                    (BOS, chat template, prompt)
understanding (image->text) answer tokens (every turn) and    the begin-of-image marker and the
                            the eos closing the last answer   image tokens but the last
==========================  ================================  ====================================

Each choice the paper leaves open is a field of :class:`SpanConfig`. The defaults are the sets
the released training code slices (``trainer/trainer_t2i.py``, ``dataset/t2i_dataset.py``,
``models/modeling_vlm.py`` at 88aef6b; ``docs/FIDELITY.md`` gives every line), edges included,
since the published targets were trained against them; every other reading is one setting away:

* generation queries (``gen_queries``): the image positions of codes 0..N-2
  (``trainer_t2i.py:187``, sliced at ``modeling_vlm.py:293``), the inputs whose output
  predicts an image token; ``image`` adds the last one;
* generation keys (``gen_keys``): every position before ``<begin_of_image>`` (BOS, template
  and prompt, ``trainer_t2i.py:186``); the paper's text says "all text tokens". ``text+boi``
  adds ``<begin_of_image>`` as the released plot script does (``gen_plot.py:118``);
  ``prompt`` keeps the prompt's own text only;
* understanding queries (``und_queries``): the answer tokens of every turn and the
  end-of-sequence token that closes the last answer (``t2i_dataset.py:168-175``,
  ``modeling_vlm.py:342-344``); ``answer`` leaves that token out. The question joins them
  with ``question_in_query``;
* understanding keys (``und_keys``): ``<begin_of_image>`` and the first N-1 image tokens,
  i.e. N positions from ``<begin_of_image>`` (``t2i_dataset.py:158``); ``boi+image`` is the
  plot script's set (``und_plot.py:67-68,95``), ``image`` the N image tokens;
* image framing tokens (``<begin_of_image>``, end-of-line, ``<end_of_image>``) are otherwise
  not image tokens (``image_markers_are_image`` adds every one of them to Q for generation
  and to K for understanding);
* queries are the positions that hold the span's tokens (``predictive`` shifts them one
  to the left).

Padding never belongs to a span. Whether a sample carries an AIA term at all is not a
span question: a generation sample whose prompt was blanked for classifier-free guidance
is flagged by its adapter (``Example.cfg_blank``), an over-long sample cut by the length
policy ``truncate-no-aia`` by the record encoder (``Example.aia_off``), and its query set is
emptied at collation, whatever its key set.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where a span is built, so that `aia --help` needs none
    import torch

__all__ = [
    "GEN_KEYS",
    "GEN_QUERIES",
    "SPAN_CHOICES",
    "TASKS",
    "UND_KEYS",
    "UND_QUERIES",
    "Role",
    "SpanConfig",
    "check_task",
    "generation_spans",
    "understanding_spans",
    "task_spans",
]

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


GEN_KEYS = ("text", "text+boi", "prompt")
GEN_QUERIES = ("image-but-last", "image")
UND_QUERIES = ("answer+eos", "answer")
UND_KEYS = ("boi+image-but-last", "boi+image", "image")


@dataclass(frozen=True)
class SpanConfig:
    """Choices the paper leaves open (each field's text is also its CLI and config help).

    The defaults are the released training code's sets (module docstring).
    """

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
    (BOS, chat template, prompt), as the released training code slices it
    (``trainer_t2i.py:186``); ``text+boi`` = that and the begin-of-image token, as the released
    plot script does (``gen_plot.py:118``); ``prompt`` = the prompt's own text only."""
    gen_queries: str = "image-but-last"
    """Generation query set: ``image-but-last`` = the positions of the image tokens but the
    sample's last one, i.e. codes 0..N-2, whose outputs predict codes 1..N-1, as the released
    training code slices them (``trainer_t2i.py:187`` ``end = [1000, 1000+575]``, used at
    ``modeling_vlm.py:293``; the plot script's fed-back tokens, ``gen_plot.py:113``, are the
    same set); ``image`` = all N image positions."""
    und_queries: str = "answer+eos"
    """Understanding query set: ``answer+eos`` = the answer tokens of every turn and the token
    that closes the last answer (its end-of-sequence), as the released training code slices
    them (``t2i_dataset.py:168-175`` puts the appended eos in the last answer's span,
    ``modeling_vlm.py:342-344``); ``answer`` = the answer tokens only."""
    und_keys: str = "boi+image-but-last"
    """Understanding key set: ``boi+image-but-last`` = the begin-of-image marker and the image
    tokens but the last one of each image, i.e. N positions from ``<begin_of_image>``, as the
    released training code slices them (``t2i_dataset.py:158`` ``front = [index, index+576]``
    with ``index`` the ``<begin_of_image>`` slot); ``boi+image`` = the marker and all N image
    tokens, as the released plot script does (``und_plot.py:67-68,95``); ``image`` = the N image
    tokens. ``image_markers_are_image`` adds every marker to any of them."""

    def __post_init__(self):
        for name, allowed in SPAN_CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


#: the allowed values of :class:`SpanConfig`'s string fields, the first one its default
SPAN_CHOICES: dict[str, tuple[str, ...]] = {
    "gen_keys": GEN_KEYS,
    "gen_queries": GEN_QUERIES,
    "und_queries": UND_QUERIES,
    "und_keys": UND_KEYS,
}


def _image_mask(roles: torch.Tensor, cfg: SpanConfig) -> torch.Tensor:
    mask = roles == Role.IMAGE
    if cfg.image_markers_are_image:
        mask = mask | (roles == Role.IMAGE_MARKER)
    return mask


def _shift_left(mask: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """Positions one to the left of ``mask``, never on padding."""
    import torch

    out = torch.zeros_like(mask)
    out[:, :-1] = mask[:, 1:]
    return out & (roles != Role.PAD)


def _image_blocks(roles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(opening, last)``, bool ``[B, T]``: per image block (a maximal run of image tokens and
    markers), the marker that opens it and its last image token."""
    import torch

    image_like = (roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)  # [B, T]
    previous = torch.zeros_like(image_like)
    previous[:, 1:] = image_like[:, :-1]
    opening = image_like & ~previous & (roles == Role.IMAGE_MARKER)
    is_image = roles == Role.IMAGE
    batch, length = roles.shape
    # image tokens at or after t, and at or after the end of t's block: a block's last image
    # token is the one image token of its block at or after itself
    after = torch.zeros(batch, length + 1, dtype=torch.long, device=roles.device)
    after[:, :length] = is_image.long().flip(-1).cumsum(-1).flip(-1)
    positions = torch.arange(length, device=roles.device).expand(batch, length)
    block_end = torch.where(image_like, length, positions).flip(-1).cummin(-1).values.flip(-1)  # [B, T]
    last = is_image & (after[:, :length] - after.gather(1, block_end) == 1)
    return opening, last


def generation_spans(roles: torch.Tensor, cfg: SpanConfig = SpanConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans of the generation task.

    Args:
        roles: ``[B, T]`` integer tensor of :class:`Role` values.
        cfg: span choices.

    Returns:
        ``(query_mask, key_mask)``, bool ``[B, T]``: Q = image tokens (``cfg.gen_queries``),
        K = the prompt's text tokens (``cfg.gen_keys``).
    """
    query = _image_mask(roles, cfg)
    if cfg.gen_queries == "image-but-last":
        query = query & ~_image_blocks(roles)[1]
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
        ``(query_mask, key_mask)``, bool ``[B, T]``: Q = answer tokens (``cfg.und_queries``,
        plus the question if ``cfg.question_in_query``), K = image tokens (``cfg.und_keys``).
    """
    import torch

    answer = roles == Role.ANSWER
    query = answer
    if cfg.und_queries == "answer+eos":
        last = answer & (answer.long().flip(-1).cumsum(-1).flip(-1) == 1)  # [B, T] the last answer token
        closing = torch.zeros_like(last)
        closing[:, 1:] = last[:, :-1]
        query = query | (closing & (roles == Role.TEMPLATE))
    if cfg.question_in_query:
        query = query | (roles == Role.PROMPT)
    if cfg.predictive:
        query = _shift_left(query, roles)
    key = _image_mask(roles, cfg)
    if cfg.und_keys != "image":
        opening, last_image = _image_blocks(roles)
        key = key | opening
        if cfg.und_keys == "boi+image-but-last":
            key = key & ~last_image
    return query, key


def task_spans(task: str, roles: torch.Tensor, cfg: SpanConfig = SpanConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Spans for ``task`` (``"gen"`` or ``"und"``)."""
    return generation_spans(roles, cfg) if check_task(task) == "gen" else understanding_spans(roles, cfg)
