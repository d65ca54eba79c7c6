"""Inference throughput, batch 1 vs batch N, side by side in one run: text-to-image
(:func:`aia.evaluate.generate_images`) and image-to-text (:func:`aia.evaluate.answer`).

Both entry points run end to end on the same in-memory model (random weights) and the same
inputs, once with ``batch_size=1`` and once with ``batch_size=N``, alternating ``--repeats``
times so that machine drift hits both alike; a first untimed round warms up. The table gives
the median wall time of each and, from it:

* ``generate_images``: images/s, and image tokens/s (Janus: the VQ codes, ``num_image_tokens``
  per image; Emu3: its ``(w + 1) * h + 3`` grammar tokens), at the family's defaults:
  classifier-free guidance (Janus 5, Emu3 3: every step runs 2 rows per image), temperature 1,
  one image per prompt, PNGs written (``plain`` layout);
* ``answer``: answers/s and answer tokens/s on a ``custom`` question file (one image per
  question, all of one size), greedy, every answer ``--answer-tokens`` long (end-of-sequence is
  suppressed until then, so that batch 1 and batch N decode the same number of tokens);

and ``x b1``, the batch-N rate over the batch-1 rate. Tokens are counted from what
``model.generate`` returns.

Presets (``--preset``):

* ``tiny`` (default): :func:`aia.testing.tiny_janus` / :func:`aia.testing.tiny_emu3`, 2 layers,
  32x32 images (16 image tokens); runs on a CPU in seconds;
* ``janus-pro-1b``: Janus only; transformers' ``JanusConfig`` with Janus-Pro-1B's language model
  (24 layers, hidden 2048, MLP 5504, 16 heads, vocabulary 102400) and its default vision
  tower, VQ and generation head (SigLIP-L/16 at 384x384, 576 image tokens, 16384 codes), the
  tiny Janus tokenizer and chat template; random weights, nothing downloaded; for a GPU.

    python benchmarks/bench_generate.py                               # CPU, tiny Janus
    python benchmarks/bench_generate.py --family emu3
    python benchmarks/bench_generate.py --preset janus-pro-1b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from aia.evaluate import answer, generate_images
from aia.jsonl import write_jsonl

#: Janus-Pro-1B's language model (deepseek-ai/Janus-Pro-1B config.json, language_config)
JANUS_PRO_1B_LM = dict(
    model_type="llama",
    hidden_size=2048,
    intermediate_size=5504,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    vocab_size=102400,
    max_position_embeddings=16384,
    rms_norm_eps=1e-6,
)
PRESETS = {"tiny": dict(prompts=8, batch=4, image=32), "janus-pro-1b": dict(prompts=8, batch=8, image=384)}
PROMPTS = ["a red circle on a blue background", "a green square at the top", "a yellow triangle at the left",
           "a white circle on a black background", "a blue square at the bottom", "a black triangle at the right"]
COLORS = ["red", "green", "blue", "white", "black", "yellow"]


def janus_pro_1b(device: torch.device, dtype: torch.dtype):
    """A random Janus-Pro-1B-shaped model (module doc) and a processor for it."""
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

    from aia.testing import tiny_janus

    _, tiny = tiny_janus(seed=0, num_layers=1)
    tok = tiny.tokenizer
    config = JanusConfig(text_config=dict(JANUS_PRO_1B_LM), image_token_id=tok.image_token_id,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    size = config.vision_config.image_size
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3),
        tokenizer=tok, chat_template=tiny.chat_template, use_default_system_prompt=True,
        num_image_tokens=config.vision_config.num_image_tokens)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # initialised in place, in dtype: no float32 copy of 2B weights
    try:
        with torch.device(device):
            model = JanusForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model.to(dtype).eval(), processor


def build(args):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.preset == "janus-pro-1b":
        if args.family != "janus":
            raise SystemExit("--preset janus-pro-1b is a Janus model: use --family janus")
        model, processor = janus_pro_1b(device, dtype)
    else:
        from aia.testing import tiny_emu3, tiny_janus

        model, processor = (tiny_janus if args.family == "janus" else tiny_emu3)(seed=0)
        model = model.to(device=device, dtype=dtype).eval()
    return model, processor


class TokenCounter:
    """Wraps ``model.generate`` to count the tokens it generates (up to and with a row's first eos)."""

    def __init__(self, model):
        self.model, self.tokens, self.original = model, 0, model.generate
        eos = model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}

    def __enter__(self):
        self.model.generate = self._generate
        return self

    def __exit__(self, *exc):
        del self.model.generate  # the class's method again

    def _generate(self, *args, **kwargs):
        out = self.original(*args, **kwargs)
        if kwargs.get("generation_mode") == "image":  # Janus: only the codes come back
            self.tokens += out.numel()
            return out
        for row in out[:, kwargs["input_ids"].shape[1]:].tolist():
            ends = [i for i, t in enumerate(row) if t in self.eos]
            self.tokens += ends[0] + 1 if ends else len(row)
        return out


@contextlib.contextmanager
def fixed_length(model, tokens: int):
    """Answers of exactly ``tokens`` tokens: end-of-sequence suppressed until then."""
    config = model.generation_config
    before = config.min_new_tokens
    config.min_new_tokens = tokens
    try:
        yield
    finally:
        config.min_new_tokens = before


def write_inputs(root: Path, prompts: int, image_size: int) -> tuple[Path, Path]:
    """``(prompts.txt, questions.jsonl)``: ``prompts`` prompts and as many questions on their images."""
    root.mkdir(parents=True, exist_ok=True)
    prompt_file = root / "prompts.txt"
    prompt_file.write_text("".join(PROMPTS[i % len(PROMPTS)] + "\n" for i in range(prompts)))
    rows = []
    for i in range(prompts):
        Image.new("RGB", (image_size, image_size), COLORS[i % len(COLORS)]).save(root / f"{i}.png")
        rows.append({"id": str(i), "image": f"{i}.png", "question": "What color is the image? Answer the question "
                     "using a single word or phrase.", "answer": COLORS[i % len(COLORS)]})
    questions = root / "questions.jsonl"
    write_jsonl(questions, rows)
    return prompt_file, questions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_generate(model, processor, prompts: Path, out: Path, batch: int, device) -> tuple[float, int, int]:
    """``(seconds, images, tokens)`` of one ``generate_images`` run."""
    with TokenCounter(model) as counter:
        sync(device)
        start = time.perf_counter()
        summary = generate_images(model, prompts, out, processor=processor, batch_size=batch, progress=False)
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, summary["images_generated"], counter.tokens


def run_answer(model, processor, questions: Path, out: Path, batch: int, tokens: int, device):
    """``(seconds, answers, tokens)`` of one ``answer`` run."""
    with TokenCounter(model) as counter, fixed_length(model, tokens):
        sync(device)
        start = time.perf_counter()
        summary = answer(model, "custom", questions, out, processor=processor, batch_size=batch,
                         max_new_tokens=tokens, progress=False)
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, summary["answered"], counter.tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["janus", "emu3"], default="janus")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--batch", type=int, default=0, help="N, the batched run's batch size (default: the preset's)")
    ap.add_argument("--prompts", type=int, default=0,
                    help="images generated and questions answered per run (default: the preset's)")
    ap.add_argument("--answer-tokens", type=int, default=16, help="tokens per answer")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads; default 1 on a CPU (tiny models gain nothing from more, whose "
                         "spin-waits make them slow on a busy CPU), else torch's; 0: torch's")
    ap.add_argument("--skip", choices=["generate", "answer"], action="append", default=[])
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    n, prompts = args.batch or preset["batch"], args.prompts or preset["prompts"]
    threads = (1 if torch.device(args.device).type == "cpu" else 0) if args.threads is None else args.threads
    if threads:
        torch.set_num_threads(threads)
    from transformers.utils import logging

    logging.set_verbosity_error()
    device = torch.device(args.device)
    model, processor = build(args)
    kinds = [k for k in ("generate", "answer") if k not in args.skip]
    sizes = sorted({1, n})
    runners = {"generate": lambda out, b: run_generate(model, processor, prompt_file, out, b, device),
               "answer": lambda out, b: run_answer(model, processor, questions, out / "pred.jsonl", b,
                                                   args.answer_tokens, device)}
    times: dict[tuple[str, int], list[float]] = {}
    counts: dict[tuple[str, int], tuple[int, int]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompt_file, questions = write_inputs(tmp / "inputs", prompts, preset["image"])
        for rep in range(args.repeats + 1):  # round 0 warms up, untimed
            for kind in kinds:
                for b in sizes:
                    seconds, items, tokens = runners[kind](tmp / f"{kind}_{b}_{rep}", b)
                    if rep:
                        times.setdefault((kind, b), []).append(seconds)
                        counts[(kind, b)] = (items, tokens)

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"\nbench_generate: family={args.family} preset={args.preset} device={args.device} dtype={args.dtype} "
          f"threads={threads} attention={model.config._attn_implementation} torch={torch.__version__} "
          f"repeats={args.repeats} (median)")
    header = f"{'what':<16} {'batch':>5} {'items':>6} {'tokens':>7} {'median s':>9} {'items/s':>9} {'tokens/s':>9} " \
             f"{'x b1':>6}"
    print(header)
    print("-" * len(header))
    rows = []
    for kind in kinds:
        base = None
        for b in sizes:
            items, tokens = counts[(kind, b)]
            seconds = statistics.median(times[(kind, b)])
            rate = items / seconds
            base = base or rate
            name = "generate_images" if kind == "generate" else "answer"
            unit = "images" if kind == "generate" else "answers"
            rows.append({"what": name, "unit": unit, "batch": b, "items": items, "tokens": tokens,
                         "median_s": seconds, "items_per_s": rate, "tokens_per_s": tokens / seconds,
                         "speedup_vs_batch1": rate / base, "times_s": times[(kind, b)]})
            print(f"{name:<16} {b:>5} {items:>6} {tokens:>7} {seconds:>9.3f} {rate:>9.2f} {tokens / seconds:>9.1f} "
                  f"{rate / base:>6.2f}")
    print("items: images (generate_images) or answers (answer); tokens: generated image tokens or answer tokens")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
