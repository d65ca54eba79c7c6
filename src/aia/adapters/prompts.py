"""How the unified-model adapters write their prompts where the sources disagree.

The adapters build every sequence by hand, piece by piece (so each position's
:class:`~aia.core.spans.Role` is known), and ``tests/adapters/test_templates.py`` checks
those pieces token for token against what the released checkpoints' own processors and
chat templates produce. Where the sources differ from each other (the transformers
checkpoint, the family's original code, the released AIA training code), the choice is a
field of :class:`PromptConfig`. A field left at ``None`` (``"default"`` for
``system_prompt``) takes the family's sourced default, its adapter's
:attr:`~aia.adapters.base.AdapterBase.prompt_defaults`:

============================  =====================  ======================  =====================
field                         Janus-Pro              Emu3                    Chameleon
============================  =====================  ======================  =====================
``system_prompt``             the processor's        "You are a helpful      none
                              ``DEFAULT_SYSTEM_      assistant."
                              PROMPT`` (1)           (2)
``image_placement``           ``as_written`` (3)     ``first`` (4)           ``as_written`` (5)
``turn_separator``            ``eos`` (3)            ``eos`` (6)             ``eos``
``answer_space``              True (3)               True (4)                False (5)
``question_suffix``           ``""`` (3)             ``""`` (4, 7)           ``""``
``gen_supervision``           ``codes`` (no others)  ``codes`` (8)           ``codes+structure``
``cfg_drop``                  0.1 (9)                0.05 (8)                0.1 (no source)
============================  =====================  ======================  =====================

(1) transformers ``JanusProcessor`` prepends ``DEFAULT_SYSTEM_PROMPT`` in text mode when
``use_default_system_prompt`` is set, as ``convert_janus_weights_to_hf.py`` sets it for the
hub checkpoints; Janus' ``VLChatProcessor`` (README understanding path, AIA's
``und_plot.py``) writes the same text. The released AIA training code leaves it out
(``t2i_dataset.py``: ``system_prompt=""``): ``system_prompt="none"``.
(2) BAAI's original ``processing_emu3.py`` hard-codes it; transformers' Emu3 docs pass it as
the system message. (3) The Janus-Pro chat template of ``convert_janus_weights_to_hf.py``
(= Janus' ``deepseek`` conversation format). (4) The Emu3-Chat-hf chat template renders
every image of a message first, then its text parts joined by spaces; BAAI's original
processor writes ``{image}{text}`` too. (5) ``ChameleonProcessor`` takes the text as
written and appends ``<reserved08706>``; its documented prompts put ``<image>`` right
against the text (``"<image>What is shown in this image?"``). (6) The Emu3-Chat-hf template
writes a space between turns, where the model itself ends an answer with ``<eos>``
(``space`` reproduces the template). (7) BAAI's original prompt is
``{image}{text}. ASSISTANT:`` (``question_suffix="."``). (8) BAAI's Emu3 fine-tuning
(``emu3/train/train.py``, ``scripts/t2i_sft.sh``): ``apply_loss_on_only_vision=True``
keeps the labels of the visual tokens only, ``null_prompt_prob=0.05``. (9) The released AIA
code, ``t2i_dataset.py``: ``random.random() < 0.1``.

``docs/FIDELITY.md`` ("Prompts per family") lists what equals each source and why the
defaults differ where they do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from aia.data.records import IMAGE_PLACEHOLDER, split_at_image

__all__ = [
    "GEN_SUPERVISION",
    "IMAGE_PLACEMENTS",
    "TURN_SEPARATORS",
    "PromptConfig",
    "place_image",
]

IMAGE_PLACEMENTS = ("as_written", "verbatim", "first")
TURN_SEPARATORS = ("eos", "space", "bos")
GEN_SUPERVISION = ("codes", "codes+structure")


@dataclass(frozen=True)
class PromptConfig:
    """Prompt choices where the sources differ (each field's text is also its CLI and config help)."""

    system_prompt: str = "default"
    """Understanding only: ``default`` = what the checkpoint's processor adds (Janus-Pro: its default system
    prompt when the processor's use_default_system_prompt is set; Emu3: "You are a helpful assistant."; Chameleon:
    none), ``none``, or the text of a system prompt."""
    image_placement: str | None = None
    """Where the understanding image goes in the first question: ``as_written`` = at its <image> placeholder
    (first when there is none), the whitespace next to it replaced by the family's separator; ``verbatim`` = at the
    placeholder with the question's own whitespace (the processor given the raw text); ``first`` = before the whole
    question, its text before and after the placeholder joined by a space. Default: Janus, Chameleon as_written;
    Emu3 first."""
    turn_separator: str | None = None
    """What follows an understanding answer that is not the last: ``eos`` = the end-of-sequence token
    (supervised); ``space`` = a space before the next turn (Emu3-Chat-hf's chat template); ``bos`` = the next turn
    starts with BOS (the released AIA training code). The last answer always ends with a supervised eos.
    Default: eos."""
    answer_space: bool | None = None
    """A space before every understanding answer, as the chat templates write it (Janus, Emu3); the released AIA
    training code encodes answers without one. Default: Janus, Emu3 true; Chameleon false."""
    question_suffix: str | None = None
    """Text appended to every understanding question: ``.`` writes BAAI's original Emu3 prompt
    ``{image}{text}. ASSISTANT:``. Default: none."""
    gen_supervision: str | None = None
    """Generation labels: ``codes`` = the image codes only (Emu3's own fine-tuning, apply_loss_on_only_vision);
    ``codes+structure`` = also the image's structure tokens after its header (Emu3: end-of-line, end-of-frame,
    end-of-image; Chameleon: end-of-image). Janus has no such tokens. Default: Janus, Emu3 codes; Chameleon
    codes+structure."""
    cfg_drop: float | None = None
    """Share of generation samples whose prompt is blanked for classifier-free guidance. Default: Emu3 0.05
    (its fine-tuning's null_prompt_prob); Janus, Chameleon 0.1 (the released AIA code)."""

    def __post_init__(self):
        if not isinstance(self.system_prompt, str):
            raise ValueError(f"system_prompt must be 'default', 'none' or a text; got {self.system_prompt!r}")
        for name, allowed in (
            ("image_placement", IMAGE_PLACEMENTS),
            ("turn_separator", TURN_SEPARATORS),
            ("gen_supervision", GEN_SUPERVISION),
        ):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if self.answer_space is not None and not isinstance(self.answer_space, bool):
            raise ValueError(f"answer_space must be true or false; got {self.answer_space!r}")
        if self.question_suffix is not None and IMAGE_PLACEHOLDER in self.question_suffix:
            raise ValueError(f"question_suffix cannot hold {IMAGE_PLACEHOLDER!r}")
        if self.cfg_drop is not None and not 0 <= self.cfg_drop < 1:
            raise ValueError(f"cfg_drop must be in [0, 1); got {self.cfg_drop!r}")

    def resolve(self, defaults: PromptConfig) -> PromptConfig:
        """This config with every field left at ``None`` taken from ``defaults``."""
        return replace(self, **{f.name: getattr(defaults, f.name) for f in fields(self) if getattr(self, f.name) is None})

    def system_text(self, default: str) -> str:
        """The system prompt's text, ``""`` for none; ``default`` is what the checkpoint's processor adds."""
        if self.system_prompt == "default":
            return default
        return "" if self.system_prompt == "none" else self.system_prompt


def place_image(question: str, placement: str) -> tuple[str, str]:
    """The first question as (text before the image, text after it) under ``placement``.

    ``as_written``: :func:`aia.data.split_at_image` (whitespace next to the placeholder
    dropped, the image first without one); ``verbatim``: split at the placeholder with the
    whitespace kept; ``first``: ``("", before + " " + after)``.
    """
    if placement == "verbatim":
        before, sep, after = question.partition(IMAGE_PLACEHOLDER)
        return (before, after) if sep else ("", question)
    before, after = split_at_image(question)
    if placement == "first":
        return "", " ".join(t for t in (before, after) if t)
    if placement != "as_written":
        raise ValueError(f"image_placement must be one of {', '.join(IMAGE_PLACEMENTS)}; got {placement!r}")
    return before, after
