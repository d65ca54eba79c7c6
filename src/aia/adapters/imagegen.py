"""Text-to-image sampling pieces the image-generating families share.

A family that generates images sets :attr:`~aia.adapters.base.AdapterBase.image_defaults`
and implements :meth:`~aia.adapters.base.AdapterBase.generate_images` (the family's prompt,
``model.generate`` call, constraint and decoder); :func:`aia.evaluate.generate_images` does
the rest (prompt files, seeds, batching, resuming, the benchmarks' layouts) for every family.
:class:`~aia.adapters.base.ImageDefaults` and :class:`~aia.adapters.base.ImageOptions`, part of
the adapter contract, are defined with it and exported here too.

Sampling (temperature, top-k, top-p) is done by :func:`seeded_sampler`, after transformers' guidance
and constraint, one ``torch.Generator`` per image seeded by the caller; the chosen token is
handed back to transformers' greedy step. So an image does not depend on the batch it was
generated in. Its draw, :func:`sample_tokens`, is the one decode-time profiling uses too
(:mod:`aia.measure.decode`).
"""

from __future__ import annotations

import copy

import torch

from aia.adapters.base import ImageDefaults, ImageOptions, unwrap

__all__ = [
    "ImageDefaults",
    "ImageOptions",
    "check_seeds",
    "generation_config",
    "sample_tokens",
    "seeded_sampler",
    "to_pil",
]


def generation_config(model, **overrides):
    """A copy of the model's generation config without sampling settings, plus ``overrides``."""
    config = copy.deepcopy(unwrap(model).generation_config)
    for name in ("temperature", "top_k", "top_p", "min_p", "typical_p", "guidance_scale"):
        setattr(config, name, None)
    config.do_sample, config.num_beams, config.num_return_sequences = False, 1, 1
    config.max_length = None
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def check_seeds(prompts: list[str], seeds: list[int]) -> None:
    """One seed per prompt, or a ``ValueError`` naming both lengths."""
    if len(seeds) != len(prompts):
        raise ValueError(f"generate_images needs one seed per prompt: {len(prompts)} prompts, {len(seeds)} seeds")


def sample_tokens(
    logits: torch.Tensor, generators: list, temperature: float, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """One token per row of ``logits`` ``[B, V]`` (float): the argmax at ``temperature`` 0, else a draw
    from ``softmax(logits / temperature)``, kept to the ``top_k`` largest when given, then to the nucleus
    ``top_p`` when given (the fewest most likely tokens whose probability reaches ``top_p``, the one that
    crosses it included, as transformers' ``TopPLogitsWarper``), row ``i`` with its own generator
    ``generators[i]`` (so a row's draw does not depend on the others). Returns ``[B]``."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ascending, order = logits.sort(dim=-1)
        drop = ascending.softmax(-1).cumsum(-1) <= 1 - top_p  # the least likely tokens, outside the nucleus
        drop[:, -1] = False  # the most likely token always stays
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.cat([torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(generators)])


def seeded_sampler(seeds: list[int], temperature: float, top_k: int | None, top_p: float | None = None):
    """A transformers ``LogitsProcessor`` that draws each row's next token with its own generator
    (row ``i`` seeded with ``seeds[i]``; temperature 0: greedy; top-k, then the nucleus ``top_p``, as
    :func:`sample_tokens`) and returns scores that allow only that token, so transformers' greedy step
    takes it. Put it after guidance and constraints."""
    from transformers import LogitsProcessor

    class SeededSampler(LogitsProcessor):
        def __init__(self):
            self.generators = None

        def __call__(self, input_ids, scores):
            scores = scores.float()
            if self.generators is None and temperature != 0:
                self.generators = [torch.Generator(device=scores.device).manual_seed(s) for s in seeds]
            chosen = sample_tokens(scores, self.generators, temperature, top_k, top_p)
            out = torch.full_like(scores, float("-inf"))
            return out.scatter_(1, chosen[:, None], 0.0)

    return SeededSampler()


def to_pil(pixels: torch.Tensor, image_processor) -> list:
    """``[B, H, W, C]`` decoder output (normalised like the processor's input) -> PIL images,
    as the processors' ``postprocess`` does: un-normalise, times 255, clip, truncate to uint8."""
    from PIL import Image

    mean = torch.tensor(image_processor.image_mean, dtype=torch.float32)
    std = torch.tensor(image_processor.image_std, dtype=torch.float32)
    pixels = (pixels.detach().float().cpu() * std + mean) * 255.0
    array = pixels.clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(a) for a in array]
