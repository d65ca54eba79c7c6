"""Decode-time profiling against plain generation of the same images and answers, batch 1 and batch N.

Four runs per task, interleaved ``--repeats`` times after an untimed warm-up round (so that the
load of a shared machine hits them alike), each timed in **CPU time** of this process
(``time.process_time``; 1 intra-op thread by default, so that other processes on the machine
do not count):

* ``profile``: :func:`aia.measure.decode.decode_profile` end to end (records read and encoded,
  prefill, one forward per token inside :func:`aia.capture`), ``batch_size`` 1 and N;
* ``plain``: the same prompts generated as the evaluation commands do: images as ``aia generate``
  (:meth:`JanusAdapter.generate_images`: prompts encoded, ``model.generate`` with classifier-free
  guidance 5, temperature 1, per-image seeds; the VQ decoding of the codes to pixels, which
  profiling does not do, is not counted), answers as ``aia answer`` (records read and encoded,
  prompts cut where the answer starts and left-padded, greedy ``model.generate``), batch 1 and N.

Generation decodes every image token (``--image-size 192``: 576 tokens, the Janus-Pro count);
understanding answers ``--answer-tokens`` tokens (plain: end of sequence suppressed until then;
profile: the cap, fewer where the model ends its turn: the tokens columns count what each run
decoded; a Janus generation decodes 576 codes, the profile's count adds nothing for the
``<end_of_image>`` the plain run does not generate either).

The table gives, per task and batch size, the median CPU seconds, items/s and tokens/s, and
``profile / plain`` (the profiling's cost over plain generation at that batch size) and
``x b1`` (items/s over batch 1's).

    python benchmarks/bench_decode.py                        # tiny Janus, 576 image tokens, CPU
    python benchmarks/bench_decode.py --device cuda --dtype bfloat16 --layers 4 --hidden 1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import aia.measure.decode as decode_mod
from aia.adapters import get_adapter
from aia.adapters.base import ImageOptions, unwrap
from aia.data.encoder import RecordEncoder, prompt_part
from aia.data.records import generation_prompt, task_records
from aia.measure.decode import DecodeSettings, decode_profile
from aia.testing import tiny_janus, write_tiny_dataset


class Clock:
    """Wraps ``owner.name`` (a callable) to add up the CPU time spent inside it."""

    def __init__(self, owner, name: str):
        self.owner, self.name, self.cpu, self.original = owner, name, 0.0, getattr(owner, name)

    def __enter__(self):
        def timed(*args, **kwargs):
            start = time.process_time()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.cpu += time.process_time() - start

        setattr(self.owner, self.name, timed)
        return self

    def __exit__(self, *exc):
        delattr(self.owner, self.name)  # the class's method again


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def plain_images(model, processor, prompts: list[str], batch: int) -> tuple[float, int, int]:
    """``(cpu s, images, tokens)`` of generating ``prompts`` as ``aia generate`` does (prompts encoded,
    ``model.generate``), without the VQ decoding of the codes to pixels (profiling has none)."""
    adapter = get_adapter(model, processor, padding_side="left")
    options = ImageOptions(guidance=5.0, temperature=1.0, top_k=None)
    start = time.process_time()
    with Clock(unwrap(model), "decode_image_tokens") as pixels:
        for i, part in enumerate(chunks(prompts, batch)):
            adapter.generate_images(model, part, list(range(i * batch, i * batch + len(part))), options)
    cpu = time.process_time() - start - pixels.cpu
    return cpu, len(prompts), len(prompts) * adapter_image_tokens(model)


def adapter_image_tokens(model) -> int:
    return int(unwrap(model).config.vision_config.num_image_tokens)


def plain_answers(model, processor, data: Path, n: int, batch: int, tokens: int) -> tuple[float, int, int]:
    """``(cpu s, answers, tokens)`` of answering the first ``n`` questions greedily as ``aia answer``
    does: records read and encoded (the image too), prompts cut and left-padded, ``model.generate``."""
    start = time.process_time()
    adapter = get_adapter(model, processor, padding_side="left")
    encode = RecordEncoder(adapter, "und", data.parent)
    examples = [prompt_part(encode(r)) for r in task_records(data, "und")[:n]]
    keys = adapter.decode_runner(model, "und").prefill_keys
    made = 0
    for part in chunks(examples, batch):
        b = adapter.collate(part)
        inputs = {k: v for k, v in b.inputs.items() if (k in keys if keys else k != "position_ids")}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        out = model.generate(
            **inputs,
            attention_mask=b.attention_mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=adapter.pad_id,
        )
        made += out[:, b.inputs["input_ids"].shape[1] :].numel()
    return time.process_time() - start, n, made


def profile(model, processor, data: Path, task: str, n: int, batch: int, tokens: int) -> tuple[float, int, int]:
    """``(cpu s, samples, tokens)`` of decode-profiling the first ``n`` records of ``task`` (tokens: as
    decoded, so an answer that ends its turn early counts what it decoded)."""
    settings = DecodeSettings(max_new_tokens=tokens if task == "und" else None)
    decoded, real = [], decode_mod.decode_batch

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        decoded.extend(len(d.tokens) for d in out)
        return out

    decode_mod.decode_batch = counting
    try:
        start = time.process_time()
        p = decode_profile(model, processor, data, task, samples=n, settings=settings, progress=False, batch_size=batch)
        cpu = time.process_time() - start
    finally:
        decode_mod.decode_batch = real
    return cpu, p.n, sum(decoded)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=192, help="pixels; image tokens = (size / 8)^2 (192: 576)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=0, help="language-model width (0: the tiny model's)")
    ap.add_argument("--samples", type=int, default=4, help="images generated and questions answered per run")
    ap.add_argument("--batch", type=int, default=4, help="N, the batched runs' batch size")
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (median)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--skip", choices=["gen", "und"], action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    overrides = {"hidden_size": args.hidden} if args.hidden else {}
    model, processor = tiny_janus(seed=0, num_layers=args.layers, image_size=args.image_size, **overrides)
    model = model.to(device=args.device, dtype=getattr(torch, args.dtype)).eval()
    sizes = sorted({1, args.batch})
    times: dict[tuple, list[float]] = {}
    counts: dict[tuple, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        und, gen = write_tiny_dataset(tmp, n_und=args.samples, n_gen=args.samples, image_size=args.image_size)
        prompts = [generation_prompt(r) for r in task_records(gen, "gen")]
        runs = {}
        for b in sizes:
            runs[("gen", "profile", b)] = lambda b=b: profile(model, processor, gen, "gen", args.samples, b, 0)
            runs[("gen", "plain", b)] = lambda b=b: plain_images(model, processor, prompts, b)
            runs[("und", "profile", b)] = lambda b=b: profile(
                model, processor, und, "und", args.samples, b, args.answer_tokens
            )
            runs[("und", "plain", b)] = lambda b=b: plain_answers(
                model, processor, und, args.samples, b, args.answer_tokens
            )
        runs = {k: v for k, v in runs.items() if k[0] not in args.skip}
        for rep in range(args.repeats + 1):  # round 0 warms up, untimed
            for key, run in runs.items():
                cpu, items, tokens = run()
                if rep:
                    times.setdefault(key, []).append(cpu)
                    counts[key] = (items, tokens)

    print(
        f"\nbench_decode: janus tiny, {args.layers} layers, hidden {unwrap(model).config.text_config.hidden_size}, "
        f"{adapter_image_tokens(model)} image tokens, device={args.device} dtype={args.dtype} "
        f"threads={torch.get_num_threads()} torch={torch.__version__}; CPU time of this process, median of "
        f"{args.repeats}, variants interleaved"
    )
    header = (
        f"{'task':<4} {'what':<8} {'batch':>5} {'items':>5} {'tokens':>6} {'cpu s':>8} {'items/s':>8} "
        f"{'tokens/s':>9} {'profile/plain':>13} {'x b1':>6}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    for task in ("gen", "und"):
        for what in ("plain", "profile"):
            for b in sizes:
                key = (task, what, b)
                if key not in times:
                    continue
                items, tokens = counts[key]
                cpu = statistics.median(times[key])
                rate = items / cpu
                base = counts[(task, what, 1)][0] / statistics.median(times[(task, what, 1)])
                plain = statistics.median(times[(task, "plain", b)])
                ratio = cpu / plain if what == "profile" else 1.0
                rows.append(
                    {
                        "task": task,
                        "what": what,
                        "batch": b,
                        "items": items,
                        "tokens": tokens,
                        "cpu_s": cpu,
                        "items_per_s": rate,
                        "tokens_per_s": tokens / cpu,
                        "profile_over_plain": ratio,
                        "speedup_vs_batch1": rate / base,
                        "times_s": times[key],
                    }
                )
                print(
                    f"{task:<4} {what:<8} {b:>5} {items:>5} {tokens:>6} {cpu:>8.3f} {rate:>8.2f} "
                    f"{tokens / cpu:>9.1f} {ratio:>13.2f} {rate / base:>6.2f}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
