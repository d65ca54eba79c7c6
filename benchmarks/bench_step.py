"""One training step with and without the AIA statistic, side by side, at one or more sequence lengths.

Variants (same model, same batch, same optimizer):

* ``sdpa``   plain SDPA attention, NTP loss only (the baseline);
* ``aia``    ``aia.capture`` (indicator column inside the fused SDPA kernel) + NTP + lambda * AIA;
* ``aia-portable`` the same through the portable route (padded tensors through
  ``F.scaled_dot_product_attention``'s own autograd, what ``aia`` was before the mass Function);
* ``flex``   ``aia.capture(method="flex")`` (CUDA only);
* ``eager``  the released code's approach: eager attention, ``output_attentions=True``,
  intensities sliced from the stored maps, NTP + lambda * AIA.

A step is forward + backward + AdamW step. Each sequence of ``--seq`` is a generation sample:
64 text tokens (the key set K) followed by ``seq - 64`` image tokens (the query set Q); the
batch is the preset's at 640 tokens and ``max(1, batch * 640 // seq)`` beyond (or ``--batch``).

Time: median of ``--reps`` steps after ``--warmup`` steps, all variants in one subprocess per
length, interleaved so that drift hits all of them alike; wall clock, or with ``--clock cpu`` the
process's CPU time (with ``--threads 1``: the work done, robust on a CPU shared with other jobs).
Memory: the whole step's peak (parameters, gradients, optimizer state, activations, temporaries;
not the growth above the start), each variant in its own subprocess after one warm-up step: on
CUDA ``torch.cuda.max_memory_allocated``; on CPU PyTorch's ``MemTracker``, which counts the live
tensor storages at every operator (deterministic, unlike RSS). Ratios are against ``sdpa`` at the
same length; the table also gives the peak above what was live when the step began.

    python benchmarks/bench_step.py                          # CPU: 4 layers, hidden 512, 8 heads, 640 tokens, batch 2
    python benchmarks/bench_step.py --seq 640,2048,4096 --variants sdpa,aia,aia-portable,eager \
        --threads 1 --clock cpu                              # the table of docs/PERFORMANCE.md
    python benchmarks/bench_step.py --seq 640,2048,4096 --widths 65,72,80 --threads 1   # the route rule
    python benchmarks/bench_step.py --preset janus-pro-1b --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

PRESETS = {
    # The CPU shape: a Llama-style LM, 4 layers, hidden 512, 8 heads.
    "cpu-small": dict(layers=4, hidden=512, heads=8, kv_heads=8, intermediate=1408, vocab=16384, batch=2),
    # Janus-Pro-1B's language model (DeepSeek-LLM 1.5B shape): 24 layers, hidden 2048, 16 heads.
    "janus-pro-1b": dict(layers=24, hidden=2048, heads=16, kv_heads=16, intermediate=5632, vocab=102400, batch=4),
}
TEXT = 64  # text tokens (the key set) at the start of every sequence; the rest are image tokens (the query set)
BASE_SEQ = 640  # 64 + 576: the presets' batch is for this length


def batch_for(args, seq: int) -> int:
    if args.batch:
        return args.batch
    b = PRESETS[args.preset]["batch"]
    return b if seq <= BASE_SEQ else max(1, b * BASE_SEQ // seq)


def build(args, seq, device, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    p = PRESETS[args.preset]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        intermediate_size=p["intermediate"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"],
        max_position_embeddings=seq + 8,
        attn_implementation="sdpa",
    )
    with torch.device(device):  # initialise on the device (a 1.5B model's CPU init takes long)
        model = LlamaForCausalLM(cfg)
    model = model.to(dtype=dtype).train()
    if args.checkpointing:  # the released recipe's setting (trainer_t2i.py:27); non-reentrant, as aia train uses
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    b, t = batch_for(args, seq), seq
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, p["vocab"], (b, t), generator=g).to(device)
    pos = torch.arange(t, device=device)
    qmask = (pos >= TEXT)[None].expand(b, t).contiguous()  # image tokens
    kmask = (pos < TEXT)[None].expand(b, t).contiguous()  # prompt text
    target = torch.full((p["layers"],), 0.3, device=device)
    delta = torch.full((p["layers"],), 0.1, device=device)
    return model, opt, ids, qmask, kmask, target, delta


def make_step(variant, model, opt, ids, qmask, kmask, target, delta, lam=5.0):
    import aia
    import aia.core.intensity
    from aia.core.loss import aia_loss

    def ntp(logits):
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())

    def step():
        opt.zero_grad(set_to_none=True)
        if variant == "sdpa":
            loss = ntp(model(input_ids=ids, use_cache=False).logits)
        elif variant in ("aia", "aia-portable", "flex"):
            aia.core.intensity._USE_MASS_FUNCTION = variant != "aia-portable"
            # backward inside the capture: activation checkpointing re-runs the attention there
            with aia.capture(model, method="flex" if variant == "flex" else "sdpa") as cap:
                # keep only the logits' loss: holding the output object would keep the logits alive in backward
                logits = model(input_ids=ids, use_cache=False, aia_query_mask=qmask, aia_key_mask=kmask).logits
                loss = ntp(logits)
                del logits
                loss = loss + lam * aia_loss(cap.intensity, target, delta, cap.valid)
                loss.backward()
            opt.step()
            return loss.detach()
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


def measure_memory(args, seq, variant) -> dict[str, int]:
    """``peak``: bytes of the whole step (everything live on the device at its highest point);
    ``start``: what was live when it began (parameters, optimizer state, last step's gradients)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, opt, *rest = build(args, seq, device, dtype)
    set_impl(model, variant)
    step = make_step(variant, model, opt, *rest)
    step()  # warm-up: optimizer state exists before the measured step
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        sync(device)
        return {"peak": torch.cuda.max_memory_allocated(), "start": start}
    # CPU has no allocator statistics: count live tensor storages (parameters, gradients,
    # optimizer state, activations, temporaries) with PyTorch's dispatch-level tracker.
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(model, opt)
    with tracker:
        start = tracker.get_tracker_snapshot("current")[device]["Total"]
        step()
    return {"peak": tracker.get_tracker_snapshot("peak")[device]["Total"], "start": start}


def measure_time(args, seq, variants) -> dict[str, dict[str, list[float]]]:
    """Seconds of each step: ``wall`` and ``cpu`` (this process's CPU time: with one thread, the
    work done, whatever else runs on the machine)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model, opt, *rest = build(args, seq, device, dtype)
    steps = {v: make_step(v, model, opt, *rest) for v in variants}
    wall = {v: [] for v in variants}
    cpu = {v: [] for v in variants}
    for i in range(args.warmup + args.reps):
        for v in variants:
            set_impl(model, v)
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            steps[v]()
            sync(device)
            if i >= args.warmup:
                wall[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
    return {"wall": wall, "cpu": cpu}


def measure_widths(args, seq, widths) -> dict[str, list[float]]:
    """The attention call alone, forward + backward, at the preset's shape: plain SDPA, then the
    mass Function at each padded head width (what ``aia.core.intensity._pad_width`` chooses from).
    Time of each: the process's CPU time (robust to other processes on the cores) and wall time."""
    from aia.core import intensity

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    p = PRESETS[args.preset]
    b, h, hkv, d = batch_for(args, seq), p["heads"], p["kv_heads"], p["hidden"] // p["heads"]
    g = torch.Generator().manual_seed(0)
    # the layouts transformers' Llama hands to attention: q [B, T, H, d] in memory, k and v [B, H, T, d]
    q = torch.randn(b, seq, h, d, generator=g).to(device, dtype).transpose(1, 2).requires_grad_()
    k, v = (torch.randn(b, hkv, seq, d, generator=g).to(device, dtype).requires_grad_() for _ in range(2))
    kmask = (torch.arange(seq, device=device) < TEXT)[None].expand(b, seq)

    def caller(out, mass=None):  # what the attention interface does with them: [B, T, H * dv]
        return out.transpose(1, 2).contiguous(), mass

    def plain():
        return caller(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=h != hkv))

    def mass_function(value, w):  # the route's own steps, at a forced width
        backend, padded = intensity._mass_route(q, k, value, kmask, None, True, w)
        return intensity._MassAttention.apply(q, k, value, kmask, None, d**-0.5, True, w, backend, padded)

    def fused(w):
        def run():
            out, mass = mass_function(v, w)
            return caller(out.transpose(1, 2), mass)

        return run

    def portable():
        return caller(*intensity._attention_with_mass_sdpa(q, k, v, kmask, None, d**-0.5, True, d + 1))

    def two_calls():  # the output from plain SDPA, the mass from a second (mass-only) call
        mass = mass_function(None, d)[1]
        return plain()[0], mass

    cases = {"sdpa": plain, **{f"w{w}": fused(w) for w in widths}, f"portable-w{d + 1}": portable}
    cases["two-calls"] = two_calls
    clock = {name: [] for name in cases}
    wall = {name: [] for name in cases}
    for i in range(args.warmup + args.reps):
        for name, fn in cases.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            outs = fn()
            torch.autograd.backward(
                [o for o in outs if o is not None], [torch.ones_like(o) for o in outs if o is not None]
            )
            sync(device)
            if i >= args.warmup:
                clock[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - t0)
            q.grad = k.grad = v.grad = None
    return {"cpu_s": clock, "wall_s": wall}


def worker(args):
    """One measurement in this process; prints one JSON line."""
    kind, seq = args.worker, args.seq_one
    variants = args.variants.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if kind == "time":
        result = measure_time(args, seq, variants)
    elif kind == "widths":
        result = measure_widths(args, seq, [int(w) for w in args.widths.split(",")])
    else:
        result = measure_memory(args, seq, variants[0])
    print("RESULT " + json.dumps(result))


def run_worker(args, kind, seq, variants) -> object:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--seq-one", str(seq)]
    cmd += ["--variants", ",".join(variants), "--preset", args.preset, "--device", args.device]
    cmd += ["--dtype", args.dtype, "--warmup", str(args.warmup), "--reps", str(args.reps)]
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.widths:
        cmd += ["--widths", args.widths]
    if args.checkpointing:
        cmd += ["--checkpointing"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(
            f"bench_step: the {kind} worker for {variants} at {seq} tokens failed (exit {proc.returncode})"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def report_widths(args, seqs, dev):
    p = PRESETS[args.preset]
    print(
        f"\nattention alone (forward + backward), {args.preset}: {p['heads']} heads, head dim "
        f"{p['hidden'] // p['heads']}, {args.dtype}, {dev}, torch {torch.__version__}; median of {args.reps}; "
        "ratios to plain SDPA (CPU time of the process | wall time)"
    )
    runs = []
    for seq in seqs:
        r = run_worker(args, "widths", seq, ["sdpa"])
        med = {m: {n: statistics.median(ts) for n, ts in r[m].items()} for m in r}
        runs.append(dict(seq=seq, batch=batch_for(args, seq), **med))
        cpu, wall = med["cpu_s"], med["wall_s"]
        cells = "  ".join(f"{n} {cpu[n] / cpu['sdpa']:.3f}|{wall[n] / wall['sdpa']:.3f}" for n in cpu if n != "sdpa")
        print(
            f"seq {seq:>5} batch {batch_for(args, seq)}: sdpa {cpu['sdpa']:.4f}s|{wall['sdpa']:.4f}s  {cells}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "device": dev, "dtype": args.dtype, "widths": runs}, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--variants", default=None, help="comma list; default sdpa,aia,eager (+flex on CUDA)")
    ap.add_argument("--seq", default=str(BASE_SEQ), help="comma list of sequence lengths (64 text + rest image)")
    ap.add_argument("--batch", type=int, default=0, help="batch at every length (default: see the module doc)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="the time in the table: wall clock, or this process's CPU time (with --threads 1 on a shared CPU: "
        "the work done, unaffected by other processes); the JSON has both",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads in the workers (default: torch's)")
    ap.add_argument(
        "--widths",
        default=None,
        help="instead of the step: time the attention call alone (forward + backward) for plain SDPA and the "
        "mass Function at these padded head widths, e.g. 65,72,80 (the route rule's measurement)",
    )
    ap.add_argument(
        "--checkpointing",
        action="store_true",
        help="non-reentrant activation checkpointing in every variant (the released recipe trains with it)",
    )
    ap.add_argument("--worker", choices=["time", "memory", "widths"], help=argparse.SUPPRESS)
    ap.add_argument("--seq-one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import aia.core.intensity

    variants = args.variants.split(",") if args.variants else ["sdpa", "aia", "eager"]
    if args.variants is None and args.device.startswith("cuda") and aia.core.intensity.flex_available(args.device):
        variants.insert(2, "flex")
    if "sdpa" not in variants:
        raise SystemExit("bench_step: the ratios are against 'sdpa'; include it in --variants")
    seqs = [int(s) for s in args.seq.split(",")]
    if min(seqs) <= TEXT:
        raise SystemExit(f"bench_step: every --seq must exceed the {TEXT} text tokens")
    p = PRESETS[args.preset]
    if args.device.startswith("cuda"):
        dev = torch.cuda.get_device_name()
        measure = "torch.cuda.max_memory_allocated, whole step"
    else:
        dev = f"CPU x{args.threads or torch.get_num_threads()} threads"
        measure = "MemTracker peak, whole step"
    if args.widths:
        return report_widths(args, seqs, dev)
    print(
        f"{args.preset}: {p['layers']} layers, hidden {p['hidden']}, {p['heads']} heads, {args.dtype}, {dev}, "
        f"{'activation checkpointing, ' if args.checkpointing else ''}"
        f"torch {torch.__version__}; time: median of {args.reps} steps ({args.clock} clock); memory: {measure}; "
        "'above start': the peak less what was live when the step began (parameters, optimizer state, gradients)",
        flush=True,
    )
    runs = []
    for seq in seqs:
        samples = run_worker(args, "time", seq, variants) if args.reps else None
        times = {v: statistics.median(ts) for v, ts in samples[args.clock].items()} if samples else None
        mem = {v: run_worker(args, "memory", seq, [v]) for v in variants}
        r = dict(
            seq=seq,
            batch=batch_for(args, seq),
            time_s=times,
            time_samples_s=samples,
            peak_bytes={v: m["peak"] for v, m in mem.items()},
            start_bytes={v: m["start"] for v, m in mem.items()},
        )
        runs.append(r)
        print_run(r, variants)
    if "aia" in variants and len(runs) > 1:
        print_summary(runs, variants)
    if args.json:
        first = runs[0]
        with open(args.json, "w") as f:
            json.dump(
                {
                    "preset": args.preset,
                    "device": dev,
                    "dtype": args.dtype,
                    "memory": measure,
                    "seq": first["seq"],
                    "batch": first["batch"],
                    "time_s": first["time_s"],
                    "peak_bytes": first["peak_bytes"],
                    "runs": runs,
                },
                f,
                indent=1,
            )


def _ratio(x: dict | None, a: str, b: str) -> str:
    return "-" if x is None else f"{x[a] / x[b]:.3f}"


def print_run(r, variants):
    times, mem, start = r["time_s"], r["peak_bytes"], r["start_bytes"]
    above = {v: mem[v] - start[v] for v in variants}
    print(
        f"\n{'seq':>6} {'batch':>5} {'variant':<13} {'step s':>8} {'x sdpa':>7} {'peak MiB':>9} {'x sdpa':>7} "
        f"{'above start MiB':>16} {'x sdpa':>7}"
    )
    for v in variants:
        step = "-" if times is None else f"{times[v]:.4f}"
        print(
            f"{r['seq']:>6} {r['batch']:>5} {v:<13} {step:>8} {_ratio(times, v, 'sdpa'):>7} {mem[v] / 2**20:>9.1f} "
            f"{mem[v] / mem['sdpa']:>7.3f} {above[v] / 2**20:>16.1f} {above[v] / above['sdpa']:>7.3f}"
        )
    if "aia" in variants and "eager" in variants:
        print(
            f"eager / aia: time {_ratio(times, 'eager', 'aia')}, peak memory {mem['eager'] / mem['aia']:.3f} "
            f"(above start {above['eager'] / above['aia']:.3f})"
        )
    sys.stdout.flush()


def print_summary(runs, variants):
    eager = "eager" in variants
    print(
        f"\n{'seq':>6} {'aia/sdpa time':>14} {'aia/sdpa mem':>13}"
        + (f" {'eager/aia time':>15} {'eager/aia mem':>14}" * eager)
    )
    for r in runs:
        t, m = r["time_s"], r["peak_bytes"]
        line = f"{r['seq']:>6} {_ratio(t, 'aia', 'sdpa'):>14} {m['aia'] / m['sdpa']:>13.3f}"
        if eager:
            line += f" {_ratio(t, 'eager', 'aia'):>15} {m['eager'] / m['aia']:>14.3f}"
        print(line)


if __name__ == "__main__":
    main()
