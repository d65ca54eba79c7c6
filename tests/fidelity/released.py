"""A port of the released AIA training computation, for the fidelity tests.

The release is ``github.com/zhengdian1/AIA`` at ``88aef6bf8346291a62b45fe02fa3d79643b53340``.
This is our own code, written from reading it; every function names the lines it follows
(``t2i_dataset.py`` = ``dataset/t2i_dataset.py``, ``trainer_t2i.py`` = ``trainer/trainer_t2i.py``,
``modeling_vlm.py`` = ``models/modeling_vlm.py``, ``processing_vlm.py`` =
``models/processing_vlm.py``, ``conversation.py`` = ``utils/conversation.py``).

It runs on a transformers ``JanusForConditionalGeneration``: the released modules map to
its parts one to one (``language_model`` -> ``model.model.language_model`` + ``model.lm_head``,
``gen_vision_model`` -> ``model.model.vqmodel``, ``gen_embed`` / ``gen_aligner`` ->
``prepare_embeddings_for_image_generation``, ``gen_head`` -> ``model.model.generation_head``,
``aligner(vision_model(.))`` -> ``model.model.get_image_features(.).pooler_output``). The
pixel values are an input here (the image transforms are tested elsewhere).

Where the release hard-codes Janus-Pro-7B's 576 image tokens (``trainer_t2i.py:187``'s 575,
``t2i_dataset.py:86,148,152,158``'s ``num_image_tokens``) the port takes ``N`` and ``N - 1``;
where it hard-codes the padding widths 1000 / 3000 (``trainer_t2i.py:146``) it takes a
``width``. Nothing else is generalised. The randomness of the release (``random.random() <
0.1`` for CFG blanking, ``np.random.choice`` for the task) is replaced by explicit arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

BOS_IMAGE = "<begin_of_image>"  # processing_vlm.py:89 image_start_tag
END_IMAGE = "<end_of_image>"  # processing_vlm.py:90 image_end_tag
IMAGE_TAG = "<image_placeholder>"  # processing_vlm.py:88 image_tag
PAD_TAG = "<｜▁pad▁｜>"  # processing_vlm.py:91 pad_tag; pad_id reads it from the vocabulary (:207-213)


def deepseek_prompt(content: str) -> str:
    """``apply_sft_template_for_multi_turn_prompts`` of one user turn and an empty assistant turn, with
    ``system_prompt=""`` (processing_vlm.py:137-177; the ``deepseek`` template, conversation.py:293-309,
    and ``get_prompt``'s DeepSeek branch, conversation.py:80-91): each message is stripped (:174), an
    empty system prompt writes nothing (:82-83), a non-empty message is ``role + ": " + message + sep``
    with sep ``"\\n\\n"`` after the user (:87-88), an empty one ``role + ":"`` (:90); the whole is
    stripped (:175)."""
    return ("<|User|>" + ": " + content.strip() + "\n\n" + "<|Assistant|>" + ":").strip()


# -- the data set ------------------------------------------------------------------------------


@dataclass
class GenSample:
    """One ``TextToImageDataset.__getitem__`` result (t2i_dataset.py:52-88), image aside."""

    input_ids: torch.Tensor  # [n]
    use_attn: int


def gen_sample(tokenizer, prompt: str, blanked: bool) -> GenSample:
    """t2i_dataset.py:65-88: the prompt in the deepseek format, then ``image_start_tag`` (:77), encoded
    with the tokenizer's BOS (:78); a blanked sample (:79, drawn there with ``random.random() < 0.1``)
    has ``input_ids[1:-1]`` set to the pad id and ``judge = 0`` (:80-81), which becomes ``use_attn``."""
    ids = tokenizer.encode(deepseek_prompt(prompt) + BOS_IMAGE, return_tensors="pt").squeeze(0)
    if blanked:
        ids[1:-1] = tokenizer.vocab.get(PAD_TAG)
    return GenSample(ids, 0 if blanked else 1)


@dataclass
class UndSample:
    """One ``ImageToTextDataset.__getitem__`` result (t2i_dataset.py:113-181), image aside."""

    input_ids: torch.Tensor  # [n]
    labels: torch.Tensor  # [n]
    front: list[int]  # key columns [start, end)
    end: list[list[int]]  # query rows, one [start, end) per answer
    use_attn: int


def und_sample(tokenizer, turns: list[tuple[str, str]], num_image_tokens: int) -> UndSample:
    """t2i_dataset.py:121-181. Turn 1's user content is ``"<image_placeholder>\\n" + question``
    (:134); every turn is encoded on its own with BOS (:144, :162); in turn 1 the placeholder becomes
    ``<begin_of_image>``, N image slots and ``<end_of_image>`` (:146-154), with labels -100 over the
    whole prompt (:148); a later turn's prompt is -100 too (:163). Each answer is encoded without
    special tokens and is its own label (:171, :176-177); the last one gets the eos token appended
    (:168-169). ``front = [index, index + N]`` with ``index`` the placeholder's slot (:147, :158); each
    answer's ``[start, end)`` goes to ``end`` (:170-175)."""
    vocab = tokenizer.vocab
    image_id, start_id, end_id = vocab.get(IMAGE_TAG), vocab.get(BOS_IMAGE), vocab.get(END_IMAGE)
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    end: list[list[int]] = []
    length = 0
    front: list[int] = []
    for turn, (question, answer) in enumerate(turns):
        content = IMAGE_TAG + "\n" + question if turn == 0 else question
        prompt = tokenizer.encode(deepseek_prompt(content), return_tensors="pt").squeeze(0)
        if turn == 0:
            index = int((prompt == image_id).nonzero()[0])
            ids += [
                prompt[:index],
                torch.tensor([start_id]),
                torch.full((num_image_tokens,), image_id),
                torch.tensor([end_id]),
                prompt[index + 1 :],
            ]
            labels.append(torch.full((len(prompt) + 1 + num_image_tokens,), -100))
            front = [index, index + num_image_tokens]
            length += len(prompt) + 1 + num_image_tokens
        else:
            ids.append(prompt)
            labels.append(torch.full((len(prompt),), -100))
            length += len(prompt)
        if turn == len(turns) - 1:
            answer = answer + tokenizer.eos_token
        answer_ids = tokenizer.encode(answer, add_special_tokens=False, return_tensors="pt").squeeze(0)
        end.append([length, length + len(answer_ids)])
        length += len(answer_ids)
        ids.append(answer_ids)
        labels.append(answer_ids)
    return UndSample(torch.cat(ids).long(), torch.cat(labels).long(), front, end, 1)


# -- the trainer's batches ---------------------------------------------------------------------


@dataclass
class ReleasedBatch:
    input_ids: torch.Tensor  # [B, width]
    attention_mask: torch.Tensor  # [B, width]
    labels: torch.Tensor | None  # [B, width] (understanding)
    image_seq_mask: torch.Tensor | None  # [B, width] (understanding)
    front: list[list[int]]
    end: list  # generation: [start, end) per sample; understanding: a list of them per sample
    use_attn: list[int]


def gen_batch(samples: list[GenSample], pad_id: int, width: int, num_image_tokens: int) -> ReleasedBatch:
    """trainer_t2i.py:164-193 with ``input_token_max_len = width`` (1000 there, :146): left padding
    into ``width`` slots (:184-185); the keys ``front = [width - 1 - n, width - 1]`` (:186), which starts
    one column early, on padding, and stops before ``<begin_of_image>``; the queries ``end = [width,
    width + 575]`` (:187), i.e. N - 1 rows from the first image position. A prompt of ``width`` tokens
    or more keeps its first ``width`` (:179-182), with ``front = [0, width - 1]``."""
    batch = len(samples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    fronts, ends = [], []
    for k, sample in enumerate(samples):
        n = len(sample.input_ids)
        if n >= width:
            attention_mask[k, :] = 1
            input_ids[k, :] = sample.input_ids[:width]
            front = [0, width - 1]
        else:
            attention_mask[k, -n:] = 1
            input_ids[k, -n:] = sample.input_ids
            front = [width - 1 - n, width - 1]
        fronts.append(front)
        ends.append([width, width + num_image_tokens - 1])
    return ReleasedBatch(input_ids, attention_mask, None, None, fronts, ends, [s.use_attn for s in samples])


def und_batch(samples: list[UndSample], pad_id: int, image_id: int, width: int) -> ReleasedBatch:
    """trainer_t2i.py:195-233 with ``input_token_max_len = width`` (3000 there, :146): left padding
    (:221-224); the spans shifted by the padding (:225-227). A sample of ``width`` tokens or more is cut
    to its first ``width`` and gets ``use_attn = 0`` (:214-219), its spans left unshifted."""
    batch = len(samples)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    image_seq_mask = torch.zeros((batch, width), dtype=torch.bool)
    fronts, ends, use = [], [], []
    for k, s in enumerate(samples):
        n = len(s.input_ids)
        front, end, use_attn = s.front, s.end, s.use_attn
        if n >= width:
            attention_mask[k, :] = 1
            input_ids[k, :] = s.input_ids[:width]
            labels[k, :] = s.labels[:width]
            image_seq_mask[k, :] = (s.input_ids == image_id)[:width]
            use_attn = 0
        else:
            attention_mask[k, -n:] = 1
            input_ids[k, -n:] = s.input_ids
            labels[k, -n:] = s.labels
            image_seq_mask[k, -n:] = s.input_ids == image_id
            offset = width - n
            front = [x + offset for x in front]
            end = [[a + offset for a in x] for x in end]
        fronts.append(front)
        ends.append(end)
        use.append(use_attn)
    return ReleasedBatch(input_ids, attention_mask, labels, image_seq_mask, fronts, ends, use)


# -- the model's forward -----------------------------------------------------------------------


def gen_band(layer_idx: int) -> tuple[float, float]:
    """(delta, target) of a generation layer, modeling_vlm.py:295-303."""
    if layer_idx < 10:
        return 0.2, 0.4
    elif layer_idx >= 10 and layer_idx < 25:
        return 0.1, 0.4
    return 0.05, 0.2


def und_target(layer_idx: int) -> float:
    """The understanding target of a layer, modeling_vlm.py:346-353 (delta 0.05 for all, :330)."""
    if layer_idx < 10:
        return 0.1
    elif layer_idx >= 10 and layer_idx <= 20:
        return 0.15
    elif layer_idx > 20 and layer_idx <= 29:
        return 0.3
    return 0.2


@dataclass
class ReleasedLoss:
    loss: torch.Tensor  # loss_ntp + lambda * loss_attn
    ntp: torch.Tensor
    attn: torch.Tensor


def _eager(model: nn.Module):
    """The release sets eager attention on its language model (modeling_vlm.py:219) and asks for the maps
    (:275, :321); transformers' Janus gets the same through its attention implementation."""
    model.set_attn_implementation("eager")


def gen_loss(model: nn.Module, batch: ReleasedBatch, pixel_values: torch.Tensor) -> ReleasedLoss:
    """modeling_vlm.py:266-311 (task_type 0): the text embeddings, then the N image embeddings of the
    VQ codes (:267-269, ``prepare_embedding`` :374-377, the codes ``[B, N]`` from the VQ's encode,
    models/vq_model.py:259-260); the mask extended by ones (:272); the language model with attention
    maps and no position ids (:274-275); the generation head's logits ``[-1-N:-1]`` against the codes,
    ``CrossEntropyLoss`` mean (:216, :279-282). Then per layer and sample the mass of rows ``end`` on
    columns ``front``, summed over columns, mean over rows, mean over heads (:293-294), one
    ``nn.HuberLoss`` per (layer, sample) against the layer's band (:295-305), times 0 without
    ``use_attn`` (:306-309), the sum divided by layers x samples (:310); ``loss_ntp + 5 * loss_attn``
    (:311)."""
    inner = model.model
    _eager(model)
    try:
        input_embeds = model.get_input_embeddings()(batch.input_ids)
        codes = inner.vqmodel.encode(pixel_values).image_tokens.view(len(batch.input_ids), -1)  # [B, N]
        image_embeds = model.prepare_embeddings_for_image_generation(codes)
        input_embeds = torch.cat((input_embeds, image_embeds), dim=1)
        b, n = image_embeds.shape[0], image_embeds.shape[1]
        attention_mask = torch.cat((batch.attention_mask, torch.ones((b, n), dtype=torch.long)), dim=1)
        outputs = inner.language_model(inputs_embeds=input_embeds, attention_mask=attention_mask, output_attentions=True)
    finally:
        model.set_attn_implementation("sdpa")
    logits = inner.generation_head(outputs.last_hidden_state)
    shift = logits[..., -1 - n : -1, :].contiguous()
    loss_ntp = nn.CrossEntropyLoss()(shift.view(-1, logits.shape[-1]), codes.view(-1))
    full = outputs.attentions
    total = 0
    for layer_idx in range(len(full)):
        for k in range(len(full[layer_idx])):
            attn = full[layer_idx][k]
            front, end = batch.front[k], batch.end[k]
            used = attn[:, end[0] : end[1], front[0] : front[1]]
            value = used.float().sum(dim=-1).mean(dim=1).mean(dim=-1)
            delta, boundary = gen_band(layer_idx)
            term = nn.HuberLoss(delta=delta)(value, torch.full_like(value, boundary))
            total = total + (term if batch.use_attn[k] else term * 0)
    loss_attn = total / (len(full) * len(full[2]))
    return ReleasedLoss(loss_ntp + 5 * loss_attn, loss_ntp, loss_attn)


def und_loss(model: nn.Module, batch: ReleasedBatch, pixel_values: torch.Tensor) -> ReleasedLoss:
    """modeling_vlm.py:313-362 (task_type 1): the image features (``prepare_embedding(.., gen_image=False)``,
    :378-380) written into the image slots sample by sample (:314-318); the language model with maps, no
    position ids (:320-321); logits ``[-W:-1]`` against ``labels[1:]``, ``CrossEntropyLoss`` mean
    (:325-328). Per layer and sample: every answer's rows on the ``front`` columns, joined (:340-344),
    summed over columns, mean over rows and heads (:345); ``nn.HuberLoss(delta=0.05)`` against the
    layer's target (:330, :346-356); a sample without ``use_attn`` adds its value times 0 (:357-360);
    the sum divided by layers x samples (:361); ``loss_ntp + 10 * loss_attn`` (:362)."""
    inner = model.model
    image_embeds = inner.get_image_features(pixel_values).pooler_output  # [B, N, D]
    input_ids = batch.input_ids.clone()
    input_ids[input_ids < 0] = 0
    input_embeds = model.get_input_embeddings()(input_ids)
    for i in range(input_embeds.shape[0]):
        input_embeds[i][batch.image_seq_mask[i]] = image_embeds[i]
    _eager(model)
    try:
        outputs = inner.language_model(
            inputs_embeds=input_embeds, attention_mask=batch.attention_mask, output_attentions=True
        )
    finally:
        model.set_attn_implementation("sdpa")
    logits = model.lm_head(outputs.last_hidden_state)
    width = batch.labels.shape[-1]
    shift_logits = logits[..., -width:-1, :].contiguous()
    shift_labels = batch.labels[..., 1:].contiguous()
    loss_ntp = nn.CrossEntropyLoss()(shift_logits.view(-1, logits.shape[-1]), shift_labels.view(-1))
    criterion = nn.HuberLoss(delta=0.05)
    full = outputs.attentions
    total = 0
    for layer_idx in range(len(full)):
        for k in range(len(full[layer_idx])):
            attn = full[layer_idx][k]
            front, end = batch.front[k], batch.end[k]
            if batch.use_attn[k]:
                used = torch.cat([attn[:, e[0] : e[1], front[0] : front[1]] for e in end], dim=1)
                value = used.float().sum(dim=-1).mean(dim=1).mean(dim=-1)
                total = total + criterion(value, torch.full_like(value, und_target(layer_idx)))
            else:
                used = attn[:, :, front[0] : front[1]]
                total = total + used.float().sum(dim=-1).mean(dim=1).mean(dim=-1) * 0
    loss_attn = total / (len(full) * len(full[2]))
    return ReleasedLoss(loss_ntp + 10 * loss_attn, loss_ntp, loss_attn)
