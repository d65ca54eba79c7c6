"""The adapter contract (:class:`AdapterBase`), and the pieces every family shares.

An adapter turns one data record into the language model's input sequence, its
next-token labels and one :class:`~aia.core.spans.Role` per position (:meth:`encode`),
pads a list of them into a batch whose AIA span masks come from
:func:`aia.core.spans.task_spans` (:meth:`collate`), and runs the training forward that
returns the NTP loss while handing the span masks to every attention call of the
language model (:meth:`forward`). :class:`AdapterBase` declares every hook and per-family
default the rest of the package uses, with its default; a family is one subclass.

Conventions shared by all families:

* ``labels`` are *unshifted* (``labels[t]`` is the token at position ``t``, or -100 where
  it is not a target); the loss compares the prediction at ``t`` with ``labels[t + 1]``
  and is the mean over all targets of the batch.
* Image positions whose token comes from the frozen VQ tokenizer hold the family's
  image placeholder id in ``input_ids`` (and in ``labels`` where they are targets); the
  forward encodes the batch's pixels, on the model's device, and fills them in. So
  :meth:`encode` never needs the model's weights.
* Position ids are counted over real tokens only, so left and right padding give the
  same loss.
* The language model is called with ``aia_query_mask`` / ``aia_key_mask`` (bool
  ``[B, T]`` over its positions). transformers passes unknown keyword arguments down to
  the attention function, where :func:`aia.capture` reads them; SDPA ignores them.
"""

from __future__ import annotations

import abc
import weakref
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from aia.adapters.prompts import PromptConfig
from aia.core.spans import Role, SpanConfig, check_task, task_spans
from aia.data.records import split_at_image

__all__ = [
    "IGNORE_INDEX",
    "AdapterBase",
    "AdapterOutput",
    "DecodeRunner",
    "Batch",
    "Example",
    "ImageDefaults",
    "ImageOptions",
    "ImageTokens",
    "SequenceBuilder",
    "collate_examples",
    "next_token_loss",
    "supervised_tokens",
    "chat_text_prompt",
    "with_bos",
    "fill_image_tokens",
    "language_model_loss",
]

IGNORE_INDEX = -100


@dataclass
class Example:
    """One encoded sample (no batch dimension).

    Attributes:
        task: ``"gen"`` or ``"und"``.
        input_ids: ``[T]`` token ids; VQ image positions hold the image placeholder id.
        roles: ``[T]`` :class:`Role` values.
        labels: ``[T]`` target ids, -100 where not supervised (unshifted).
        pixel_values: ``[C, H, W]`` the processed image, or None.
        image_sizes: ``[2]`` (height, width) in pixels of the image inside
            ``pixel_values`` (Emu3, whose images keep their aspect ratio), or None.
        cfg_blank: a generation sample whose prompt was blanked for classifier-free
            guidance: it carries no AIA term (its query set is emptied at collation).
        aia_off: a sample cut by the length policy ``truncate-no-aia``
            (:class:`aia.data.encoder.LengthPolicy`): it keeps its NTP loss, but carries no AIA
            term either.
    """

    task: str
    input_ids: torch.Tensor
    roles: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_sizes: torch.Tensor | None = None
    cfg_blank: bool = False
    aia_off: bool = False

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class Batch:
    """A padded batch of one task.

    Attributes:
        task: ``"gen"`` or ``"und"``.
        inputs: what the family's forward needs: ``input_ids`` ``[B, T]``,
            ``position_ids`` ``[B, T]``, and ``pixel_values`` ``[B, C, H, W]`` /
            ``image_sizes`` ``[B, 2]`` when the family uses them.
        labels: ``[B, T]`` unshifted targets, -100 on padding and unsupervised positions.
        roles: ``[B, T]`` :class:`Role` values, ``Role.PAD`` on padding.
        attention_mask: ``[B, T]`` 1 on real tokens, 0 on padding.
        query_mask: ``[B, T]`` bool, the AIA query set Q.
        key_mask: ``[B, T]`` bool, the AIA key set K.
        num_targets: the next-token targets in ``labels``, counted on the host when the batch
            was collated (so the loss needs no device sync to count them); None: count them.
    """

    task: str
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    roles: torch.Tensor
    attention_mask: torch.Tensor
    query_mask: torch.Tensor
    key_mask: torch.Tensor
    num_targets: int | None = None

    def to(self, device: torch.device | str) -> Batch:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            labels=self.labels.to(device),
            roles=self.roles.to(device),
            attention_mask=self.attention_mask.to(device),
            query_mask=self.query_mask.to(device),
            key_mask=self.key_mask.to(device),
        )

    @property
    def batch_size(self) -> int:
        return self.labels.shape[0]


@dataclass
class AdapterOutput:
    """Result of :meth:`AdapterBase.forward`.

    Attributes:
        loss: scalar NTP loss, mean over the batch's ``num_tokens`` targets.
        num_tokens: number of supervised targets in the batch.
    """

    loss: torch.Tensor
    num_tokens: int


@dataclass
class DecodeRunner:
    """How one family's model is called for decode-time profiling (:mod:`aia.measure.decode`).

    ``base`` is called as ``base(**inputs, attention_mask=, position_ids=, cache=,
    use_cache=True, aia_query_mask=, aia_key_mask=)`` and returns ``last_hidden_state``.
    """

    base: nn.Module
    head: Callable  #: hidden [B, D] -> logits [B, V]
    prefill_keys: tuple[str, ...] | None = ("input_ids",)  #: batch inputs the prefill takes (None: all)
    embed_prefill: Callable | None = None  #: input_ids [B, T] -> inputs_embeds [B, T, D] (None: pass ids)
    embed_step: Callable | None = None  #: like embed_prefill, for the decoded tokens
    allowed: torch.Tensor | None = None  #: ids the choice may pick (None: all but ``blocked``)
    blocked: torch.Tensor | None = None
    forced: dict[int, int] | None = None  #: role -> token id decoded without a choice


@dataclass(frozen=True)
class ImageDefaults:
    """A family's text-to-image sampling defaults (:attr:`AdapterBase.image_defaults`).

    Attributes:
        guidance: classifier-free guidance scale (1: none).
        top_k: sample among the ``top_k`` most likely tokens (None: all).
        positive: appended to every prompt.
        negative: the guidance's negative prompt ("" where the family guides against an empty prompt).
        options: the family-specific options of :func:`aia.evaluate.generate_images` it accepts
            (``positive_prompt``, ``negative_prompt``, ``image_area``, ``ratio`` other than ``"1:1"``).
        temperature: sampling temperature (0: greedy).
        top_p: sample in the nucleus of this probability (None: all).
        guided: the family takes classifier-free guidance (a ``guidance`` other than 1 is refused where not,
            before the model loads).
    """

    guidance: float
    top_k: int | None
    positive: str = ""
    negative: str = ""
    options: tuple[str, ...] = ()
    temperature: float = 1.0
    top_p: float | None = None
    guided: bool = True


@dataclass(frozen=True)
class ImageOptions:
    """The sampling settings of one :meth:`AdapterBase.generate_images` call (the user's, with the
    family's :class:`ImageDefaults` filled in)."""

    guidance: float
    temperature: float
    top_k: int | None
    positive: str = ""
    negative: str = ""
    image_area: int | None = None
    ratio: str = "1:1"
    top_p: float | None = None


@dataclass(frozen=True)
class ImageTokens:
    """One generated image as its tokens, what :meth:`AdapterBase.generate_images` returns for a family
    whose pixel decoder is not part of its transformers class (:attr:`AdapterBase.image_output`
    ``"tokens"``: GLM-Image, whose decoder is a diffusion transformer outside transformers).

    Attributes:
        grids: ``(rows, columns)`` of each token grid, in the order the model wrote them.
        tokens: the codes of each grid, row by row (``rows * columns`` each).
    """

    grids: tuple[tuple[int, int], ...]
    tokens: tuple[tuple[int, ...], ...]

    def __post_init__(self):
        if len(self.grids) != len(self.tokens):
            raise ValueError(f"{len(self.grids)} grids but {len(self.tokens)} token lists")
        for (rows, cols), codes in zip(self.grids, self.tokens, strict=True):
            if rows * cols != len(codes):
                raise ValueError(f"a {rows} x {cols} grid holds {rows * cols} tokens, got {len(codes)}")

    def to_dict(self) -> dict:
        """``{"grids": [[rows, columns], ...], "tokens": [[code, ...], ...]}`` (JSON-ready)."""
        return {"grids": [list(g) for g in self.grids], "tokens": [list(t) for t in self.tokens]}


def id_tensor(ids, device: torch.device) -> torch.Tensor:
    """Sorted unique token ids as a long tensor on ``device``."""
    return torch.tensor(sorted({int(i) for i in ids}), dtype=torch.long, device=device)


#: tokenizer -> {template text: its ids}; entries go with their tokenizer
_TEMPLATE_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class SequenceBuilder:
    """Builds ``input_ids`` / ``roles`` / ``labels`` piece by piece.

    Each text piece is tokenized on its own (no special tokens added), so every
    position's role is known exactly; a piece's leading space stays with it, which is
    how byte-level BPE tokenizers split chat text anyway. Special tokens enter only by
    id: text that spells one (a literal ``<image>`` in an answer) stays plain text.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.roles: list[int] = []
        self.labels: list[int] = []

    def text(self, text: str, role: Role, supervised: bool = False) -> SequenceBuilder:
        ids = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []
        return self.tokens(ids, role, supervised)

    def tokens(self, ids: list[int] | int, role: Role, supervised: bool = False) -> SequenceBuilder:
        ids = [ids] if isinstance(ids, int) else list(ids)
        self.ids += ids
        self.roles += [int(role)] * len(ids)
        self.labels += ids if supervised else [IGNORE_INDEX] * len(ids)
        return self

    def template(self, piece: str | list[int]) -> SequenceBuilder:
        """A TEMPLATE piece: text, or token ids. A text's ids are computed once per tokenizer
        (the chat template's fixed pieces recur in every sample)."""
        if isinstance(piece, str):
            known = _TEMPLATE_IDS.setdefault(self.tokenizer, {})
            if piece not in known:
                known[piece] = self.tokenizer(piece, add_special_tokens=False, split_special_tokens=True)["input_ids"]
            piece = known[piece]
        return self.tokens(piece, Role.TEMPLATE)

    def dialogue(
        self,
        turns: list[tuple[str, str]],
        image: Callable[[SequenceBuilder, str, str], object],
        eos_id: int,
        *,
        user: str | list[int] = "",
        first_user: str | list[int] | None = None,
        assistant: str | list[int] = "",
        space: str = "",
        answer_space: str | None = None,
        separator: str = "eos",
        bos_id: int | None = None,
        question_suffix: str = "",
        split: Callable[[str], tuple[str, str]] = split_at_image,
    ) -> SequenceBuilder:
        """The understanding turns ``{user}{question}{assistant}{answer}<eos>``, one after the other.

        ``user`` (``first_user``, when given, in the first turn) and ``assistant`` are
        TEMPLATE pieces (:meth:`template`). The first question (with ``question_suffix``
        appended) is split at its ``<image>`` placeholder by ``split`` (default
        :func:`aia.data.split_at_image`) and ``image(self, before, after)`` writes it with the
        image block; a later question is ``space + question + question_suffix`` (PROMPT). An
        answer is ``answer_space + answer`` (ANSWER; ``answer_space`` defaults to ``space``),
        supervised. An empty later question or answer adds no tokens.

        ``separator`` says what follows an answer that is not the last (the last one is always
        closed by ``eos_id``, TEMPLATE, supervised): ``"eos"`` the same supervised ``eos_id``;
        ``"space"`` a space that opens the next turn (merged into its first text piece, as a
        byte-level BPE tokenizes the whole string); ``"bos"`` nothing, the next turn starting
        with ``bos_id`` (TEMPLATE).
        """
        if separator not in ("eos", "space", "bos"):
            raise ValueError(f"separator must be 'eos', 'space' or 'bos', got {separator!r}")
        if separator == "bos" and bos_id is None:
            raise ValueError("separator 'bos' needs bos_id")
        answer_space = space if answer_space is None else answer_space
        pending = ""  # the "space" separator, written in front of the next turn's first text piece
        for i, (question, answer) in enumerate(turns):
            if i and separator == "bos":
                self.tokens(bos_id, Role.TEMPLATE)
            tag = first_user if i == 0 and first_user is not None else user
            if isinstance(tag, str):
                if tag:
                    self.template(pending + tag)
                    pending = ""
            else:
                if pending:
                    self.template(pending)
                    pending = ""
                self.template(tag)
            if i == 0:
                image(self, *split(question + question_suffix))
            elif question:
                self.text(pending + space + question + question_suffix, Role.PROMPT)
                pending = ""
            if pending:
                self.template(pending)
                pending = ""
            self.template(assistant)
            if answer:
                self.text(answer_space + answer, Role.ANSWER, supervised=True)
            if i == len(turns) - 1 or separator == "eos":
                self.tokens(eos_id, Role.TEMPLATE, supervised=True)
            elif separator == "space":
                pending = " "
        return self

    def build(self, task: str, **extra) -> Example:
        long = torch.long
        return Example(
            task=task,
            input_ids=torch.tensor(self.ids, dtype=long),
            roles=torch.tensor(self.roles, dtype=long),
            labels=torch.tensor(self.labels, dtype=long),
            **extra,
        )


def token_id(tokenizer, token: str) -> int:
    """Id of a single (special) token, with a clear error when the tokenizer lacks it."""
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or idx == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no token {token!r}")
    return idx


def check_encode_args(task: str, cfg_blank: bool) -> None:
    """Raise a ValueError for an unknown ``task`` or ``cfg_blank`` on an understanding sample."""
    check_task(task)
    if cfg_blank and task != "gen":
        raise ValueError("cfg_blank only applies to generation samples")


def collate_examples(examples: list[Example], pad_token_id: int, padding_side: str, span_config: SpanConfig) -> Batch:
    """Pad examples of one task into a :class:`Batch`.

    Sequences are padded on ``padding_side`` (``"left"`` or ``"right"``); images of
    different sizes are zero-padded at the bottom/right to the largest one (their true
    size stays in ``image_sizes``).
    """
    if not examples:
        raise ValueError("cannot collate an empty list of examples")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    task = examples[0].task
    if any(ex.task != task for ex in examples):
        raise ValueError("a batch holds one task; got " + ", ".join(sorted({ex.task for ex in examples})))
    length = max(len(ex) for ex in examples)

    def pad(values: list[torch.Tensor], fill: int) -> torch.Tensor:
        out = torch.full((len(values), length), fill, dtype=torch.long)
        for i, v in enumerate(values):
            if padding_side == "right":
                out[i, : v.shape[0]] = v
            else:
                out[i, length - v.shape[0] :] = v
        return out

    input_ids = pad([ex.input_ids for ex in examples], pad_token_id)
    labels = pad([ex.labels for ex in examples], IGNORE_INDEX)
    roles = pad([ex.roles for ex in examples], int(Role.PAD))
    attention_mask = pad([torch.ones_like(ex.input_ids) for ex in examples], 0)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # [B, T] counted over real tokens
    inputs = {"input_ids": input_ids, "position_ids": position_ids}

    with_pixels = [ex.pixel_values is not None for ex in examples]
    if any(with_pixels):
        if not all(with_pixels):
            raise ValueError("either every example of a batch has an image or none has")
        h = max(ex.pixel_values.shape[-2] for ex in examples)
        w = max(ex.pixel_values.shape[-1] for ex in examples)
        pixels = examples[0].pixel_values.new_zeros(len(examples), examples[0].pixel_values.shape[0], h, w)
        for i, ex in enumerate(examples):
            pixels[i, :, : ex.pixel_values.shape[-2], : ex.pixel_values.shape[-1]] = ex.pixel_values
        inputs["pixel_values"] = pixels
        if examples[0].image_sizes is not None:
            inputs["image_sizes"] = torch.stack([ex.image_sizes for ex in examples])

    query_mask, key_mask = task_spans(task, roles, span_config)
    carries_term = torch.tensor([not (ex.cfg_blank or ex.aia_off) for ex in examples])  # [B]
    query_mask = query_mask & carries_term[:, None]
    return Batch(
        task=task,
        inputs=inputs,
        labels=labels,
        roles=roles,
        attention_mask=attention_mask,
        query_mask=query_mask,
        key_mask=key_mask,
        num_targets=supervised_tokens(labels),  # labels are on the host here
    )


class AdapterBase(abc.ABC):
    """The adapter contract: everything the rest of the package asks of a model family.

    A family is one subclass (one file): it sets :attr:`family`, implements the four abstract
    hooks (:meth:`encode`, :meth:`forward`, :meth:`language_model`, :meth:`decode_runner`) and
    overrides any other member whose default does not fit; the training, profiling, answering and
    generation code calls nothing else. :func:`aia.adapters.register_adapter` tells
    :func:`aia.adapters.get_adapter` which transformers model class it handles.

    Class attributes are the family's defaults (what it encodes, its prompt choices, CFG drop,
    frozen modules, text-to-image defaults). An instance holds the processor and its
    ``tokenizer``, the span settings and padding side, the resolved prompt choices
    (:attr:`prompt_config`), the ``bos_id`` / ``eos_id`` of the tokenizer and ``pad_id`` (its pad
    token, else eos).
    """

    #: the family's name (profiles, messages, ``aia generate``'s summary; the marker value of a
    #: family registered with ``marked=True``)
    family: ClassVar[str]
    #: the tasks :meth:`encode` takes: ``"und"`` (the family answers questions: ``aia eval``, lmms-eval)
    #: and ``"gen"``
    tasks: ClassVar[tuple[str, ...]] = ("und", "gen")
    #: the family's sourced prompt choices (:class:`~aia.adapters.prompts.PromptConfig`, every field set);
    #: None: the family takes no prompt choices (a non-default ``prompt_config`` is refused)
    prompt_defaults: ClassVar[PromptConfig | None] = None
    #: share of generation samples whose prompt is blanked for classifier-free guidance when
    #: ``data.cfg_drop`` is not set (the released AIA code's 0.1); a family with prompt choices takes
    #: its resolved ``prompt_config.cfg_drop`` instead
    cfg_drop: float = 0.1
    #: name parts of the parameters ``aia train`` freezes when ``model.frozen`` is not set (the released
    #: AIA code's: the VQ tokenizer and the understanding vision tower)
    frozen_modules: ClassVar[tuple[str, ...]] = ("vqmodel", "vision_model")
    #: name parts of the modules that only one task runs through (their parameters get no
    #: gradient from the other task's micro-batches); empty when both tasks share every module
    task_specific_modules: ClassVar[tuple[str, ...]] = ()
    #: a text-only prompt's system message (None: the chat template's own)
    text_system: ClassVar[str | None] = None
    #: processor keyword arguments a text-only prompt is encoded with
    text_processor_kwargs: ClassVar[dict] = {}
    #: text-to-image sampling defaults; None: the family generates no images (:meth:`generate_images`)
    image_defaults: ClassVar[ImageDefaults | None] = None
    #: what :meth:`generate_images` returns: ``"pixels"`` (PIL images) or ``"tokens"`` (:class:`ImageTokens`,
    #: a family whose pixel decoder is not part of its transformers class)
    image_output: ClassVar[str] = "pixels"
    #: the end of the error :meth:`generate_images` raises where ``image_defaults`` is None
    no_images_reason: ClassVar[str] = "generates no images; text-to-image needs a family that does (Janus(-Pro), Emu3; GLM-Image writes token grids)"
    #: the image placeholder id the default :meth:`image_block` looks for (set by the family's
    #: ``__init__``; a family without one overrides :meth:`image_block`)
    image_token_id: int | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "family", None), str) or not cls.family:
            raise TypeError(f"{cls.__name__} must set the class attribute family (the family's name)")

    def __init__(
        self,
        model: nn.Module,
        processor,
        span_config: SpanConfig = SpanConfig(),
        padding_side: str = "right",
        prompt_config: PromptConfig | None = None,
    ):
        """
        Args:
            model: the family's transformers model (possibly PEFT-wrapped); the adapter keeps its
                class name (``model_class``), never its weights.
            processor: the model's processor, with a ``tokenizer``.
            span_config: choices of the AIA query/key sets.
            padding_side: ``"right"`` or ``"left"``.
            prompt_config: prompt choices (None: :attr:`prompt_defaults`); fields left at None take
                the family's default.

        Raises:
            InputError: prompt choices for a family that takes none.
        """
        self.model_class = type(unwrap(model)).__name__
        if self.prompt_defaults is None:
            if prompt_config is not None and prompt_config != PromptConfig():
                from aia.errors import InputError

                raise InputError(f"{type(self).__name__} takes no prompt choices; got {prompt_config}")
            self.prompt_config: PromptConfig | None = None
        else:
            self.prompt_config = (prompt_config or PromptConfig()).resolve(self.prompt_defaults)
            if self.prompt_config.cfg_drop is not None:
                self.cfg_drop = self.prompt_config.cfg_drop
        self.processor = processor
        self.tokenizer = tok = processor.tokenizer
        self.span_config = span_config
        self.padding_side = padding_side
        self.bos_id, self.eos_id = tok.bos_token_id, tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id

    # -- what every family implements ------------------------------------------------------
    @abc.abstractmethod
    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        """Encode one record of ``task`` (one of :attr:`tasks`; images relative to ``base_dir``).
        ``image`` (a PIL image) replaces the record's image file; ``cfg_blank`` (generation only)
        blanks the prompt as for classifier-free guidance."""

    @abc.abstractmethod
    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        """Training forward: NTP loss of the batch; the language model gets the span masks
        (:func:`aia_kwargs`)."""

    @abc.abstractmethod
    def language_model(self, model: nn.Module) -> nn.Module:
        """The decoder stack whose attention AIA observes."""

    @abc.abstractmethod
    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """How to call ``model`` to decode ``task`` one token at a time (``aia profile --mode decode``,
        answering)."""

    # -- defaults a family may override -----------------------------------------------------
    def collate(self, examples: list[Example], padding_side: str | None = None) -> Batch:
        """Pad examples of one task into a :class:`Batch` with its AIA span masks, on
        ``padding_side`` (default: the family's :attr:`padding_side`; decoding pads left)."""
        return collate_examples(examples, self.pad_id, padding_side or self.padding_side, self.span_config)

    @classmethod
    def load_processor(cls, model_dir: Path):
        """The processor saved in ``model_dir`` (``AutoProcessor``, offline)."""
        import transformers

        return transformers.AutoProcessor.from_pretrained(model_dir)

    def image_block(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[T]`` bool: which of ``input_ids`` are image tokens to generate (here: the positions of
        :attr:`image_token_id`)."""
        return input_ids == self.image_token_id

    def text_prompt(self, question: str) -> tuple[str, dict]:
        """A question without an image, as the family's chat format writes it, up to where the answer
        starts: ``(text, processor kwargs)``; the text starts with BOS (encode it with
        ``add_special_tokens=False``). With a chat template: :func:`chat_text_prompt`; without one:
        the family's own format (:meth:`plain_text_prompt`)."""
        if getattr(self.processor, "chat_template", None):
            return chat_text_prompt(self.processor, question, self.text_system, self.text_processor_kwargs)
        return with_bos(self.tokenizer, self.plain_text_prompt(question)), {}

    def plain_text_prompt(self, question: str) -> str:
        """:meth:`text_prompt` for a processor without a chat template (here: refused).

        Raises:
            InputError: the family has no text-only format.
        """
        from aia.errors import InputError

        raise InputError(f"the {self.family} processor has no chat template; cannot build a text-only prompt")

    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """One PIL image per prompt, image ``i`` sampled with the generator seeded ``seeds[i]``
        (:func:`~aia.adapters.imagegen.seeded_sampler`), so that it does not depend on the batch.
        Families that generate images override it (and set :attr:`image_defaults`).

        Raises:
            InputError: the family generates no images (:attr:`no_images_reason`).
        """
        from aia.errors import InputError

        raise InputError(f"{type(unwrap(model)).__name__} {self.no_images_reason}")

    def decode_sampling(self) -> dict:
        """How decode-time profiling (:class:`aia.measure.decode.DecodeSettings`) chooses generation tokens
        where the user does not say: ``{"cfg_weight", "temperature", "top_k", "top_p"}``. Here the released
        plot script's (``gen_plot.py``: classifier-free guidance 5, sampling at temperature 1 over every code);
        a family whose checkpoint samples otherwise returns its own."""
        return {"cfg_weight": 5.0, "temperature": 1.0, "top_k": None, "top_p": None}

    @classmethod
    def task_refusal(cls, task: str, model_class: str) -> str:
        """The one-line reason a model of ``model_class`` (this family) cannot take ``task`` samples."""
        kind = {("und",): "an understanding-only", ("gen",): "a generation-only"}.get(tuple(cls.tasks), "a")
        return f"{model_class} is {kind} model ({cls.family}): it takes no {task!r} samples"

    def generation_settings(self) -> dict:
        """What a saved checkpoint's ``generation_config`` needs for the family's own ``generate``
        (``{key: value}``; a dict value is merged into the current one); here nothing."""
        return {}


def with_bos(tokenizer, text: str) -> str:
    """``text`` starting with the tokenizer's BOS text (unchanged if it has none or already starts so)."""
    bos = tokenizer.bos_token
    return bos + text if bos and not text.startswith(bos) else text


def chat_text_prompt(processor, question: str, system: str | None = None, processor_kwargs: dict | None = None):
    """A question without an image through ``processor``'s chat template (generation prompt added,
    ``system`` as a system message first): ``(text starting with BOS, processor kwargs)``."""
    messages = [{"role": "user", "content": [{"type": "text", "text": question}]}]
    if system:
        messages.insert(0, {"role": "system", "content": [{"type": "text", "text": system}]})
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return with_bos(processor.tokenizer, text), dict(processor_kwargs or {})


def aia_kwargs(batch: Batch) -> dict[str, torch.Tensor]:
    """The span masks as the keyword arguments the attention function reads."""
    return {"aia_query_mask": batch.query_mask, "aia_key_mask": batch.key_mask}


def language_model_loss(lm: nn.Module, batch: Batch, head, labels: torch.Tensor | None = None, **inputs) -> AdapterOutput:
    """The last step of every family's training forward: ``lm`` (the language model, or the model's own
    forward that calls it) over ``inputs`` (``input_ids``, ``inputs_embeds``, ``pixel_values``...) with the
    batch's attention mask, positions and span masks (:func:`aia_kwargs`), no cache; then the NTP loss of
    ``labels`` (default: the batch's) through ``head`` (:func:`next_token_loss`)."""
    out = lm(**inputs, attention_mask=batch.attention_mask, position_ids=batch.inputs["position_ids"],
             use_cache=False, **aia_kwargs(batch))
    return next_token_loss(out.last_hidden_state, batch.labels if labels is None else labels, head, batch.num_targets)


def fill_image_tokens(
    input_ids: torch.Tensor, labels: torch.Tensor, placeholder_id: int, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put the image tokens of a batch into its placeholder positions.

    Args:
        input_ids: ``[B, T]`` with ``placeholder_id`` at image positions.
        labels: ``[B, T]``; image positions that are targets hold the placeholder too.
        placeholder_id: the image placeholder token id.
        tokens: the batch's image tokens in reading order, sample after sample (any
            shape, ``numel`` = number of placeholders).

    Returns:
        ``(input_ids, labels)`` with the placeholders replaced.
    """
    mask = input_ids == placeholder_id  # [B, T]
    if input_ids.device.type != "cpu" and hasattr(torch, "_assert_async"):
        # an internal invariant: checked on the device, without a host sync on accelerators
        torch._assert_async(mask.sum() == tokens.numel(), "image placeholders != image tokens")
    elif int(mask.sum()) != tokens.numel():
        raise ValueError(
            f"the batch has {int(mask.sum())} image placeholders but the image tokenizer gave {tokens.numel()} tokens"
        )
    tokens = tokens.reshape(-1).to(device=input_ids.device, dtype=input_ids.dtype)
    filled = input_ids.masked_scatter(mask, tokens)
    labels = torch.where(mask & (labels != IGNORE_INDEX), filled, labels)
    return filled, labels


def supervised_tokens(labels: torch.Tensor) -> int:
    """How many next-token targets ``labels`` ``[B, T]`` (unshifted, -100 where none) holds:
    the denominator of :func:`next_token_loss`."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def next_token_loss(hidden: torch.Tensor, labels: torch.Tensor, head, num_tokens: int | None = None) -> AdapterOutput:
    """Mean next-token cross-entropy, with the output head applied to target positions only.

    Args:
        hidden: ``[B, T, D]`` last hidden states of the language model.
        labels: ``[B, T]`` unshifted targets, -100 where none.
        head: maps ``[N, D]`` hidden states to ``[N, V]`` logits (for example the
            ``lm_head``), so the ``[B, T, V]`` logits tensor is never built.
        num_tokens: the targets in ``labels`` when the host already counted them
            (:attr:`Batch.num_targets`): the target rows are then gathered without a device
            sync (``nonzero_static``); None counts them (one sync on an accelerator).
    """
    targets = labels[:, 1:].reshape(-1)  # [B*(T-1)]: the token each position predicts
    keep = targets != IGNORE_INDEX
    if num_tokens is None:
        num_tokens = supervised_tokens(labels)  # host sync on an accelerator
    elif labels.device.type != "cpu" and hasattr(torch, "_assert_async"):
        torch._assert_async(keep.sum() == num_tokens, "Batch.num_targets differs from the labels' targets")
    elif int(keep.sum()) != num_tokens:
        raise ValueError(f"num_tokens={num_tokens}, but the labels hold {int(keep.sum())} next-token targets")
    rows = torch.nonzero_static(keep, size=num_tokens).squeeze(1)  # [N], in position order, as keep's True
    logits = head(hidden[:, :-1].reshape(-1, hidden.shape[-1]).index_select(0, rows))  # [N, V]
    loss = F.cross_entropy(logits.float(), targets.index_select(0, rows), reduction="sum") / max(num_tokens, 1)
    return AdapterOutput(loss=loss, num_tokens=num_tokens)


def module_dtype(module: nn.Module) -> torch.dtype:
    """dtype of a module's first parameter (what its floating inputs should be cast to)."""
    return next(module.parameters()).dtype


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (LoRA injects its layers in place)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model
