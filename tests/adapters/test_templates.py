"""The adapters' sequences against the released checkpoints' own prompt paths, token for token.

The tiny processors carry the real chat templates and processor settings
(:mod:`aia.testing.tiny`), so "the processor's own path" is what a user of the released
transformers checkpoint gets: ``apply_chat_template`` then the processor (Janus-Pro, Emu3),
or the processor on the prompt text (Chameleon, which has no chat template). Every
understanding turn is compared at the point where the model answers (the generation prompt
of that turn), and the whole conversation once more with its last answer. Then one test per
documented deviation (docs/FIDELITY.md, "Prompts per family") shows it, and the option that
reproduces the other source.
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image
from transformers.models.janus.processing_janus import DEFAULT_SYSTEM_PROMPT as HF_JANUS_SYSTEM

from aia.adapters import IGNORE_INDEX, PromptConfig, get_adapter
from aia.adapters.base import fill_image_tokens
from aia.adapters.emu3 import SYSTEM as EMU3_SYSTEM
from aia.adapters.janus import DEFAULT_SYSTEM_PROMPT
from aia.adapters.prompts import place_image
from aia.core.spans import Role
from aia.errors import InputError
from aia.testing.tiny import TINY_MODELS
from aia.testing.tiny_understanding import TINY_UNDERSTANDING_MODELS
from tests.helpers import gen_record, und_record

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE = Image.new("RGB", (32, 32), (200, 20, 20))
PROMPT = "a red circle on a blue background"
#: the first question, by where its image placeholder stands
QUESTIONS = {
    "first": "<image>\nwhat color is the circle?",
    "middle": "look at this <image> and tell me: what color is the circle?",
    "absent": "what color is the circle?",
}
LATER = [("where is it?", "at the top"), ("is there a shape in the picture?", "yes")]

#: the choices that make each family's sequences equal the checkpoint's chat template
TEMPLATE_EQUAL = {
    "janus": PromptConfig(),  # the defaults
    "emu3": PromptConfig(turn_separator="space"),  # Emu3-Chat-hf's template writes a space between turns
    "chameleon": PromptConfig(),
}


def turns_of(where: str, n: int) -> list[tuple[str, str]]:
    return [(QUESTIONS[where], "red"), *LATER][:n]


# -- the checkpoints' own paths ----------------------------------------------------------------


def user_parts(question: str, first: bool) -> list[dict]:
    """A data-format question as chat-template content: the text around ``<image>`` (stripped),
    the image where the placeholder stood, first when the first question has none."""
    text = lambda t: {"type": "text", "text": t}  # noqa: E731
    if not first:
        return [text(question)]
    before, sep, after = question.partition("<image>")
    if not sep:
        return [{"type": "image"}, text(question)]
    return [*([text(before.strip())] if before.strip() else []), {"type": "image"},
            *([text(after.strip())] if after.strip() else [])]


def messages(turns: list[tuple[str, str]], upto: int, system: str | None = None, last_answer: bool = False):
    """The conversation up to turn ``upto``'s question (and its answer with ``last_answer``)."""
    out = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    for i, (question, answer) in enumerate(turns[: upto + 1]):
        out.append({"role": "user", "content": user_parts(question, i == 0)})
        if i < upto or last_answer:
            out.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return out


def chameleon_text(turns: list[tuple[str, str]], upto: int, last_answer: bool = False, processor=None) -> str:
    """Chameleon's separator convention: ``{Q}<reserved08706>{A}</s>`` per turn, the image against
    the text as in ChameleonProcessor's documented prompts."""
    sep, eos = processor.tokenizer.sep_token, processor.tokenizer.eos_token
    text = ""
    for i, (question, answer) in enumerate(turns[: upto + 1]):
        parts = user_parts(question, i == 0)
        text += "".join("<image>" if p["type"] == "image" else p["text"] for p in parts)
        if i < upto or last_answer:
            text += sep + answer + (eos if i < upto else "")
    return text


def reference(family: str, processor, turns, upto: int, last_answer: bool = False) -> torch.Tensor:
    """Token ids of the conversation as the checkpoint's processor builds them (no closing eos)."""
    if family == "chameleon":
        text = chameleon_text(turns, upto, last_answer, processor)
        # the processor appends the separator in chat mode; the answered conversation is a completion
        out = processor(text=text, images=IMAGE, return_tensors="pt", return_for_text_completion=last_answer)
        return out["input_ids"][0]
    system = EMU3_SYSTEM if family == "emu3" else None
    text = processor.apply_chat_template(
        messages(turns, upto, system, last_answer), add_generation_prompt=not last_answer, tokenize=False
    )
    if family == "emu3" and last_answer:
        text = text.removesuffix(" ")  # the template's space after the last answer, where training puts eos
    return processor(text=text, images=IMAGE, return_tensors="pt")["input_ids"][0]


def answer_starts(roles: torch.Tensor) -> list[int]:
    """The first position of every answer."""
    answer = roles == Role.ANSWER
    starts = answer.clone()
    starts[1:] &= ~answer[:-1]
    return starts.nonzero().flatten().tolist()


def encode_und(family, model, processor, turns, config: PromptConfig | None = None):
    adapter = get_adapter(model, processor, prompt_config=config)
    return adapter, adapter.encode(und_record(*turns), "und", None, image=IMAGE)


# -- equal to the checkpoint's path ------------------------------------------------------------


@pytest.mark.parametrize("n_turns", [1, 3])
@pytest.mark.parametrize("where", ["first", "middle", "absent"])
def test_understanding_equals_chat_template(tiny_model, family, where, n_turns):
    model, processor = tiny_model
    turns = turns_of(where, n_turns)
    adapter, ex = encode_und(family, model, processor, turns, TEMPLATE_EQUAL[family])
    starts = answer_starts(ex.roles)
    assert len(starts) == n_turns
    for k, start in enumerate(starts):  # what the model sees when it answers turn k
        assert ex.input_ids[:start].tolist() == reference(family, processor, turns, k).tolist(), f"turn {k}"
    # the whole conversation: the last answer, then the eos that training adds to close it
    full = reference(family, processor, turns, n_turns - 1, last_answer=True)
    assert ex.input_ids.tolist() == [*full.tolist(), adapter.eos_id]
    out = processor(text=processor.image_token, images=IMAGE, return_tensors="pt")
    torch.testing.assert_close(ex.pixel_values, out["pixel_values"][0])


def test_understanding_defaults_equal_chat_template_single_turn(tiny_model, family):
    """With no choice made, a one-turn prompt is the checkpoint's, wherever the image stands."""
    model, processor = tiny_model
    for where in QUESTIONS:
        turns = turns_of(where, 1)
        _, ex = encode_und(family, model, processor, turns)
        start = answer_starts(ex.roles)[0]
        assert ex.input_ids[:start].tolist() == reference(family, processor, turns, 0).tolist(), where


def test_generation_equals_processor(tiny_model, family):
    """The prompt part of a generation sample is the processor's image-generation prompt."""
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    ex = adapter.encode(gen_record(PROMPT), "gen", None, image=IMAGE)
    blank = adapter.encode(gen_record(PROMPT), "gen", None, image=IMAGE, cfg_blank=True)
    if family == "janus":  # chat template, then the processor's image mode appends <begin_of_image>
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}], add_generation_prompt=True
        )
        ref = processor(text=text, generation_mode="image", return_tensors="pt")["input_ids"][0]
        null = ref.clone()
        null[1:-1] = adapter.pad_id  # Janus' generation code: the unconditional branch pads [1:-1]
        end = adapter.boi_id
    elif family == "emu3":  # the processor appends the image header of a 32x32 (4x4 tokens) image
        kw = dict(return_for_image_generation=True, image_area=32 * 32, return_tensors="pt")
        out = processor(text=PROMPT, **kw)
        assert out["image_sizes"][0] == [4, 4]
        ref = out["input_ids"][0]
        null = processor(text="", **kw)["input_ids"][0]  # Emu3's fine-tuning: the null prompt ""
        end = adapter.wrapper_id
    else:  # the processor appends the chat separator
        ref = processor(text=PROMPT, return_tensors="pt")["input_ids"][0]
        null = processor(text="", return_tensors="pt")["input_ids"][0]
        end = adapter.sep_id
    cut = int((ex.input_ids == end).nonzero()[0]) + 1
    assert ex.input_ids[:cut].tolist() == ref.tolist()
    cut = int((blank.input_ids == end).nonzero()[0]) + 1
    assert blank.input_ids[:cut].tolist() == null.tolist()


def test_janus_verbatim_equals_original_processor():
    """``verbatim``: Janus' own VLChatProcessor, which writes a content string as it is
    (``<|User|>: {content}\\n\\n<|Assistant|>:``), the image where its placeholder stands."""
    model, processor = TINY_MODELS["janus"](seed=0)
    for where, question in QUESTIONS.items():
        _, ex = encode_und("janus", model, processor, [(question, "red")], PromptConfig(image_placement="verbatim"))
        content = question.replace("<image>", processor.image_token)
        if "<image>" not in question:
            content = processor.image_token + "\n" + content  # the data format: no placeholder, image first
        ref = processor(text=f"<|User|>: {content}\n\n<|Assistant|>:", images=IMAGE, return_tensors="pt")
        start = answer_starts(ex.roles)[0]
        assert ex.input_ids[:start].tolist() == ref["input_ids"][0].tolist(), where


# -- the documented deviations -----------------------------------------------------------------


def test_janus_system_prompt_is_the_processors():
    """Default: the hub processor's system prompt (use_default_system_prompt); the released AIA
    training code has none (``system_prompt="none"``); any other text goes the same place."""
    model, processor = TINY_MODELS["janus"](seed=0)
    assert processor.use_default_system_prompt
    assert HF_JANUS_SYSTEM == DEFAULT_SYSTEM_PROMPT + "\n\n"  # our copy of transformers' text
    turns = turns_of("first", 1)
    plain = copy.copy(processor)
    plain.use_default_system_prompt = False  # as the released training code (and transformers' own tests)
    without = reference("janus", plain, turns, 0)

    adapter, ex = encode_und("janus", model, processor, turns)
    assert adapter.prompt_config.system_prompt == DEFAULT_SYSTEM_PROMPT
    start = answer_starts(ex.roles)[0]
    assert ex.input_ids[:start].tolist() == reference("janus", processor, turns, 0).tolist()
    system = processor.tokenizer(DEFAULT_SYSTEM_PROMPT + "\n\n", add_special_tokens=False)["input_ids"]
    assert ex.input_ids[1 : 1 + len(system)].tolist() == system  # right after <bos>
    assert (ex.roles[: 1 + len(system)] == Role.TEMPLATE).all()
    assert ex.input_ids[:start].tolist() != without.tolist()

    adapter, ex = encode_und("janus", model, processor, turns, PromptConfig(system_prompt="none"))
    assert adapter.prompt_config.system_prompt == "none"
    assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == without.tolist()
    # "default" follows the processor: one saved without the flag adds none
    _, ex = encode_und("janus", model, plain, turns)
    assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == without.tolist()

    _, ex = encode_und("janus", model, processor, turns, PromptConfig(system_prompt="Answer in one word."))
    text = "Answer in one word.\n\n" + plain.apply_chat_template(messages(turns, 0), add_generation_prompt=True)
    ref = plain(text=text, images=IMAGE, return_tensors="pt")["input_ids"][0]
    assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == ref.tolist()


def released_janus_und(processor, turns) -> tuple[list[int], list[int]]:
    """(input_ids, labels) as the released AIA code builds a multi-turn sample
    (``dataset/t2i_dataset.py`` ``ImageToTextDataset``): per turn ``[user: q, assistant: ""]``
    in the deepseek format with ``system_prompt=""``, encoded with its own BOS; the first
    question ``"<image_placeholder>\\n" + q``; answers encoded without a leading space, only
    the last with the eos."""
    plain = copy.copy(processor)
    plain.use_default_system_prompt = False
    tok = processor.tokenizer
    ids, labels = [], []
    for i, (question, answer) in enumerate(turns):
        content = processor.image_token + "\n" + question if i == 0 else question
        sft = f"<|User|>: {content}\n\n<|Assistant|>:"  # the deepseek format of [user, assistant ""]
        prompt = plain(text=sft, images=IMAGE if i == 0 else None, return_tensors="pt")["input_ids"][0].tolist()
        answer = tok(answer + (tok.eos_token if i == len(turns) - 1 else ""), add_special_tokens=False)["input_ids"]
        ids += prompt + answer
        labels += [IGNORE_INDEX] * len(prompt) + answer
    return ids, labels


def test_janus_released_training_multi_turn():
    """The released training code re-encodes every turn with its own BOS, writes answers without a
    leading space and no eos between turns; the chat template (our default) keeps the space and
    closes every answer with eos. ``turn_separator="bos"``, ``answer_space=False`` and
    ``system_prompt="none"`` give the released sequence and labels."""
    model, processor = TINY_MODELS["janus"](seed=0)
    turns = [("what color is the circle?", "red"), *LATER]
    ids, labels = released_janus_und(processor, turns)
    released = PromptConfig(system_prompt="none", turn_separator="bos", answer_space=False)
    _, ex = encode_und("janus", model, processor, turns, released)
    assert ex.input_ids.tolist() == ids
    assert ex.labels.tolist() == labels
    assert int((ex.input_ids == processor.tokenizer.bos_token_id).sum()) == len(turns)

    _, default = encode_und("janus", model, processor, turns)
    assert default.input_ids.tolist() != ids
    tok = processor.tokenizer
    assert int((default.input_ids == tok.bos_token_id).sum()) == 1
    assert int((default.input_ids == tok.eos_token_id).sum()) == len(turns)
    starts = answer_starts(default.roles)
    assert tok.convert_ids_to_tokens(int(default.input_ids[starts[0]])).startswith("Ġ")  # " red"


def test_emu3_original_prompt_has_a_period():
    """BAAI's original processor writes ``{image}{text}. ASSISTANT:``; the HF template (our
    default) has no ``.``. ``question_suffix="."`` writes the original."""
    model, processor = TINY_MODELS["emu3"](seed=0)
    for where in QUESTIONS:  # the original puts the image first whatever the question
        turns = turns_of(where, 1)
        before, after = place_image(QUESTIONS[where], "first")
        original = f"{EMU3_SYSTEM} USER: {processor.image_token}{before}{after}. ASSISTANT:"
        ref = processor(text=original, images=IMAGE, return_tensors="pt")["input_ids"][0].tolist()
        _, ex = encode_und("emu3", model, processor, turns, PromptConfig(question_suffix="."))
        assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == ref, where
        _, default = encode_und("emu3", model, processor, turns)
        default_prompt = default.input_ids[: answer_starts(default.roles)[0]].tolist()
        assert default_prompt != ref
        assert default_prompt == reference("emu3", processor, turns, 0).tolist()


def test_emu3_image_goes_first():
    """Both Emu3 paths put the image before the question's text; ``as_written`` keeps a
    mid-question image where the data put it, which neither does."""
    model, processor = TINY_MODELS["emu3"](seed=0)
    turns = turns_of("middle", 1)
    ref = reference("emu3", processor, turns, 0).tolist()
    _, default = encode_und("emu3", model, processor, turns)
    _, written = encode_und("emu3", model, processor, turns, PromptConfig(image_placement="as_written"))
    first_marker = lambda ex: int((ex.roles == Role.IMAGE_MARKER).nonzero()[0])  # noqa: E731
    assert not (default.roles[: first_marker(default)] == Role.PROMPT).any()
    assert (written.roles[: first_marker(written)] == Role.PROMPT).any()
    assert default.input_ids[: answer_starts(default.roles)[0]].tolist() == ref
    assert written.input_ids[: answer_starts(written.roles)[0]].tolist() != ref
    # verbatim: the processor given the raw question after the template's "USER: "
    _, verbatim = encode_und("emu3", model, processor, turns, PromptConfig(image_placement="verbatim"))
    raw = f"{EMU3_SYSTEM} USER: {QUESTIONS['middle']} ASSISTANT:"
    ref = processor(text=raw, images=IMAGE, return_tensors="pt")["input_ids"][0].tolist()
    assert verbatim.input_ids[: answer_starts(verbatim.roles)[0]].tolist() == ref


def test_emu3_turn_separator():
    """Between turns the HF template writes a space; by default an answer ends with the eos the
    model generates (supervised), as Janus' template does too."""
    model, processor = TINY_MODELS["emu3"](seed=0)
    turns = turns_of("first", 2)
    adapter, default = encode_und("emu3", model, processor, turns)
    _, space = encode_und("emu3", model, processor, turns, PromptConfig(turn_separator="space"))
    second = answer_starts(default.roles)[1]
    ref = reference("emu3", processor, turns, 1).tolist()
    assert default.input_ids[:second].tolist() != ref
    assert space.input_ids[: answer_starts(space.roles)[1]].tolist() == ref
    closing = (default.input_ids == adapter.eos_id) & (default.labels != IGNORE_INDEX)
    assert int(closing.sum()) == 2
    closing = (space.input_ids == adapter.eos_id) & (space.labels != IGNORE_INDEX)
    assert int(closing.sum()) == 1  # the last answer only


def test_emu3_generation_supervises_codes_only():
    """Emu3's fine-tuning (apply_loss_on_only_vision) keeps the labels of the visual tokens: our
    default labels equal that rule on the filled sequence; ``codes+structure`` adds the
    end-of-lines, end-of-frame and end-of-image."""
    model, processor = TINY_MODELS["emu3"](seed=0)
    visual = torch.tensor(model.model.vocabulary_mapping.image_tokens)

    def filled(config):
        adapter = get_adapter(model, processor, prompt_config=config)
        batch = adapter.collate([adapter.encode(gen_record(PROMPT), "gen", None, image=IMAGE)])
        tokens = adapter._image_tokens(model, batch.inputs["pixel_values"], batch.inputs["image_sizes"])
        ids, labels = fill_image_tokens(batch.inputs["input_ids"], batch.labels, adapter.image_token_id, tokens)
        return adapter, ids[0], labels[0]

    adapter, ids, labels = filled(None)
    emu3_rule = torch.where(torch.isin(ids, visual), ids, IGNORE_INDEX)  # BAAI's datasets.py
    assert labels.tolist() == emu3_rule.tolist()
    assert int((labels != IGNORE_INDEX).sum()) == 16  # 4x4 codes

    _, ids, labels = filled(PromptConfig(gen_supervision="codes+structure"))
    extra = (labels != IGNORE_INDEX) & ~torch.isin(ids, visual)
    eol = model.model.vocabulary_mapping.eol_token_id
    assert sorted(ids[extra].tolist()) == sorted([eol] * 4 + [adapter.eof_id, adapter.eoi_id])


def test_cfg_drop_defaults():
    """Emu3's fine-tuning drops the prompt at 0.05 (null_prompt_prob), the released AIA code at 0.1."""
    defaults = {}
    for family, build in TINY_MODELS.items():
        model, processor = build(seed=0)
        adapter = get_adapter(model, processor)
        defaults[family] = type(adapter).prompt_defaults.cfg_drop
        assert adapter.prompt_config.cfg_drop == adapter.cfg_drop == defaults[family]
        chosen = get_adapter(model, processor, prompt_config=PromptConfig(cfg_drop=0.2))
        assert chosen.prompt_config.cfg_drop == chosen.cfg_drop == 0.2
    assert defaults == {"janus": 0.1, "emu3": 0.05, "chameleon": 0.1}


def test_chameleon_mid_question_whitespace():
    """ChameleonProcessor keeps the text as written; by default the adapter drops the whitespace
    next to a mid-question image (the processor's documented prompts have none there);
    ``verbatim`` keeps it and equals the processor fed the raw question."""
    model, processor = TINY_MODELS["chameleon"](seed=0)
    for where in ("middle", "first"):
        question = QUESTIONS[where]
        raw = processor(text=question, images=IMAGE, return_tensors="pt")["input_ids"][0].tolist()
        _, default = encode_und("chameleon", model, processor, [(question, "red")])
        _, verbatim = encode_und("chameleon", model, processor, [(question, "red")], PromptConfig(image_placement="verbatim"))
        assert verbatim.input_ids[: answer_starts(verbatim.roles)[0]].tolist() == raw, where
        assert default.input_ids[: answer_starts(default.roles)[0]].tolist() != raw, where


# -- the config itself -------------------------------------------------------------------------


def test_prompt_config_resolves_per_family(tiny_model, family):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    resolved = adapter.prompt_config
    assert all(v is not None for v in vars(resolved).values())
    defaults = type(adapter).prompt_defaults
    assert all(v is not None for k, v in vars(defaults).items() if k != "system_prompt")  # every choice sourced
    for name in ("image_placement", "turn_separator", "answer_space", "question_suffix", "gen_supervision"):
        assert getattr(resolved, name) == getattr(defaults, name)
    assert resolved.system_prompt == {"janus": DEFAULT_SYSTEM_PROMPT, "emu3": EMU3_SYSTEM, "chameleon": "none"}[family]
    # an explicit choice wins; the adapter classes take it directly too
    chosen = type(adapter)(model, processor, prompt_config=PromptConfig(image_placement="first", answer_space=False))
    assert chosen.prompt_config.image_placement == "first" and chosen.prompt_config.answer_space is False
    assert chosen.prompt_config.turn_separator == defaults.turn_separator


def test_prompt_config_rejects_bad_values():
    for bad in (
        dict(image_placement="last"),
        dict(turn_separator="newline"),
        dict(gen_supervision="all"),
        dict(cfg_drop=1.0),
        dict(cfg_drop=-0.1),
        dict(answer_space="yes"),
        dict(system_prompt=None),
        dict(question_suffix="<image>"),
    ):
        with pytest.raises(ValueError):
            PromptConfig(**bad)
    with pytest.raises(ValueError, match="image_placement"):
        place_image("a <image> b", "last")


def test_understanding_models_take_no_prompt_choices():
    model, processor = TINY_UNDERSTANDING_MODELS["qwen2_vl"](seed=0)
    get_adapter(model, processor, prompt_config=PromptConfig())  # the all-default config is accepted
    with pytest.raises(InputError, match="takes no prompt choices"):
        get_adapter(model, processor, prompt_config=PromptConfig(system_prompt="none"))


@pytest.mark.parametrize("family", ["emu3", "chameleon"])  # Janus: test_janus_system_prompt_is_the_processors
def test_custom_system_prompt_other_families(family):
    """A system prompt goes right after BOS: Emu3 ``{text} USER:``, Chameleon the text as given."""
    model, processor = TINY_MODELS[family](seed=0)
    turns = turns_of("first", 1)
    _, ex = encode_und(family, model, processor, turns, PromptConfig(system_prompt="Be brief."))
    if family == "emu3":
        text = processor.apply_chat_template(messages(turns, 0, "Be brief."), add_generation_prompt=True)
        ref = processor(text=text, images=IMAGE, return_tensors="pt")["input_ids"][0].tolist()
        assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == ref
        _, none = encode_und(family, model, processor, turns, PromptConfig(system_prompt="none"))
        text = processor.apply_chat_template(messages(turns, 0), add_generation_prompt=True)
        ref = processor(text=text, images=IMAGE, return_tensors="pt")["input_ids"][0].tolist()
        assert none.input_ids[: answer_starts(none.roles)[0]].tolist() == ref
    else:
        ref = processor(text="Be brief." + chameleon_text(turns, 0, processor=processor), images=IMAGE,
                        return_tensors="pt")["input_ids"][0].tolist()
        assert ex.input_ids[: answer_starts(ex.roles)[0]].tolist() == ref


# -- text-only prompts (the lmms-eval plugin's questions without an image) ----------------------

PLAIN_TEXT = {
    "janus": "{bos}<|User|>: {q}\n\n<|Assistant|>:",
    "emu3": "{bos}" + EMU3_SYSTEM + " USER: {q} ASSISTANT:",
    "chameleon": "{bos}{q}",  # ChameleonProcessor appends its chat separator
}


def test_text_prompt_of_each_family(family):
    model, processor = TINY_MODELS[family](seed=0)
    adapter = get_adapter(model, processor)
    question = "what is red?"
    templated = adapter.text_prompt(question)
    processor.chat_template = None
    text, kwargs = adapter.text_prompt(question)
    assert text == PLAIN_TEXT[family].format(bos=processor.tokenizer.bos_token, q=question) and kwargs == {}
    if family != "chameleon":  # the tiny processors carry Janus's and Emu3's real chat templates
        assert templated == (text, {})  # the hand-written format is what the template renders


def test_text_prompt_through_a_chat_template_keeps_the_family_settings():
    model, processor = TINY_MODELS["chameleon"](seed=0)
    processor.chat_template = "{% for m in messages %}{{ m['content'][0]['text'] }}{% endfor %}<sep>"
    text, kwargs = get_adapter(model, processor).text_prompt("hi")
    assert text == processor.tokenizer.bos_token + "hi<sep>"
    assert kwargs == {"return_for_text_completion": True}  # the template ended the turn


def test_text_prompt_for_a_model_without_an_adapter():
    from aia.adapters.base import chat_text_prompt

    model, processor = TINY_UNDERSTANDING_MODELS["qwen2_vl"](seed=0)
    processor.chat_template = (  # chatml, as Qwen2-VL's
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'][0]['text'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    text, kwargs = chat_text_prompt(processor, "hi", system="be brief")
    bos = processor.tokenizer.bos_token or ""
    assert text == bos + "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert kwargs == {}
