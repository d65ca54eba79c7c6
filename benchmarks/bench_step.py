"""One training step with and without the AIA statistic, side by side in one run.

Variants (same model, same batch, same optimizer):

* ``sdpa``   plain SDPA attention, NTP loss only (the baseline);
* ``aia``    ``aia.capture`` (indicator column inside the fused SDPA kernel) + NTP + lambda * AIA;
* ``flex``   ``aia.capture(method="flex")`` (CUDA only);
* ``eager``  the released code's approach: eager attention, ``output_attentions=True``,
  intensities sliced from the stored maps, NTP + lambda * AIA.

A step is forward + backward + AdamW step. Time: median of ``--reps`` steps after
``--warmup`` steps, variants interleaved so that drift hits all of them alike. Peak
memory of a step, above what the process held just before it: on CUDA from the
allocator's peak statistics; on CPU from PyTorch's ``MemTracker``, which counts the
live tensor storages at every operator (deterministic, unlike RSS). Ratios are against ``sdpa`` from the same run.

    python benchmarks/bench_step.py                 # CPU: 4 layers, hidden 512, 8 heads, 64 + 576 tokens
    python benchmarks/bench_step.py --preset janus-pro-1b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aia
from aia.core.loss import aia_loss

PRESETS = {
    # The CPU shape: a Llama-style LM, 4 layers, hidden 512, 8 heads.
    "cpu-small": dict(layers=4, hidden=512, heads=8, kv_heads=8, intermediate=1408, vocab=16384, batch=2),
    # Janus-Pro-1B's language model (DeepSeek-LLM 1.5B shape): 24 layers, hidden 2048, 16 heads.
    "janus-pro-1b": dict(layers=24, hidden=2048, heads=16, kv_heads=16, intermediate=5632, vocab=102400, batch=4),
}
TEXT, IMAGE = 64, 576


def build(args, device, dtype):
    p = PRESETS[args.preset]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        max_position_embeddings=TEXT + IMAGE + 8,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = p["batch"], TEXT + IMAGE
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, p["vocab"], (b, t), generator=g).to(device)
    pos = torch.arange(t, device=device)
    qmask = (pos >= TEXT)[None].expand(b, t).contiguous()  # image tokens
    kmask = (pos < TEXT)[None].expand(b, t).contiguous()  # prompt text
    target = torch.full((p["layers"],), 0.3, device=device)
    delta = torch.full((p["layers"],), 0.1, device=device)
    return model, opt, ids, qmask, kmask, target, delta


def make_step(variant, model, opt, ids, qmask, kmask, target, delta, lam=5.0):
    def ntp(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "sdpa":
            loss = ntp(model(input_ids=ids, use_cache=False).logits)
        elif variant in ("aia", "flex"):
            with aia.capture(model, method="flex" if variant == "flex" else "sdpa") as cap:
                # keep only the logits' loss: holding the output object would keep the logits alive in backward
                logits = model(input_ids=ids, use_cache=False, aia_query_mask=qmask, aia_key_mask=kmask).logits
                loss = ntp(logits)
                del logits
                loss = loss + lam * aia_loss(cap.intensity, target, delta, cap.valid)
        elif variant == "eager":
            out = model(input_ids=ids, use_cache=False, output_attentions=True)
            inten = torch.stack(
                [a[:, :, TEXT:, :TEXT].float().sum(-1).mean((1, 2)) for a in out.attentions]
            )  # [L, B], the released code's slicing
            loss = ntp(out.logits)
            del out
            loss = loss + lam * aia_loss(inten, target, delta)
        else:
            raise ValueError(variant)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def set_impl(model, variant):
    model.set_attn_implementation("eager" if variant == "eager" else "sdpa")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure_memory(args, variant):
    """Peak bytes of one step above what the process held just before it."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, opt, *rest = build(args, device, dtype)
    set_impl(model, variant)
    step = make_step(variant, model, opt, *rest)
    step()  # warm-up: optimizer state exists before the measured step
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    # CPU has no allocator statistics: count live tensor storages (parameters, gradients,
    # optimizer state, activations, temporaries) with PyTorch's dispatch-level tracker.
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        before = tracker.get_tracker_snapshot("current")[device]["Total"]
        step()
    return tracker.get_tracker_snapshot("peak")[device]["Total"] - before


def measure_time(args, variants):
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, opt, *rest = build(args, device, dtype)
    steps = {v: make_step(v, model, opt, *rest) for v in variants}
    times = {v: [] for v in variants}
    for i in range(args.warmup + args.reps):
        for v in variants:
            set_impl(model, v)
            sync(device)
            t0 = time.perf_counter()
            steps[v]()
            sync(device)
            if i >= args.warmup:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(ts) for v, ts in times.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--variants", default=None, help="comma list; default sdpa,aia,eager (+flex on CUDA)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    variants = args.variants.split(",") if args.variants else ["sdpa", "aia", "eager"]
    if args.variants is None and args.device.startswith("cuda") and aia.core.intensity.flex_available(args.device):
        variants.insert(2, "flex")
    times = measure_time(args, variants)
    mem = {v: measure_memory(args, v) for v in variants}
    p = PRESETS[args.preset]
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU x{torch.get_num_threads()} threads"
    print(
        f"\n{args.preset}: {p['layers']} layers, hidden {p['hidden']}, {p['heads']} heads, batch {p['batch']}, "
        f"{TEXT}+{IMAGE} tokens, {args.dtype}, {dev}, torch {torch.__version__}"
    )
    print(f"{'variant':<8} {'step s':>9} {'x sdpa':>7} {'peak MiB':>10} {'x sdpa':>7}")
    for v in variants:
        print(
            f"{v:<8} {times[v]:>9.4f} {times[v] / times['sdpa']:>7.3f} {mem[v] / 2**20:>10.1f} "
            f"{mem[v] / mem['sdpa']:>7.3f}"
        )
    if "eager" in variants and "aia" in variants:
        print(
            f"aia vs eager: {times['eager'] / times['aia']:.2f}x faster, {mem['eager'] / mem['aia']:.2f}x less peak memory"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"preset": args.preset, "device": dev, "dtype": args.dtype, "time_s": times, "peak_bytes": mem}, f
            )


if __name__ == "__main__":
    main()
