"""Run every fused intensity route once on a device and print the self-checks' verdicts (JSON).

The first call of a fused route for a (device, dtype, kernel, head dims) checks itself against
the fp64 softmax math (:mod:`aia.core.intensity`, "Self-check of the fused routes"). This
script makes those first calls for the shapes the shipped models use (head dims 64 and 128,
GQA, a padded batch's bool mask and plain causal, output and mass or the mass alone, with and
without autograd) and prints :func:`aia.core.intensity.kernel_routes`: which route ran for
each case and each self-check's verdict, so a first GPU run records them in one call
(``benchmarks/gpu_check.sh``).

    python benchmarks/check_routes.py --device cuda [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from aia.core.intensity import attention_with_mass, flex_available, flex_verified, kernel_routes


def exercise(device: torch.device, dtype: torch.dtype, d: int) -> None:
    """Training-like calls (grad, padded batch, causal) and a decoding step for one case."""
    g = torch.Generator().manual_seed(0)
    b, h, hkv, t = 2, 8, 2, 100

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype)

    q, k, v = rand(b, h, t, d).requires_grad_(), rand(b, hkv, t, d).requires_grad_(), rand(b, hkv, t, d)
    kmask = (torch.rand(b, t, generator=g) < 0.3).to(device)
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, :17] = False  # left padding
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    mask = (causal[None, None] & keep[:, None, None, :]).to(device)  # [B, 1, T, T], as sdpa_mask
    for attn in (mask, None):
        out, mass = attention_with_mass(q, k, v, kmask, attn)
        (out.float().sum() + mass.float().sum()).backward()
        _, mass = attention_with_mass(q, k, None, kmask, attn)
        mass.float().sum().backward()
    with torch.no_grad():
        attention_with_mass(q[:, :, -1:], k, v, kmask, mask[:, :, -1:])  # a decoding step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="bfloat16,float16,float32")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in args.dtypes.split(","):
            for d in (int(x) for x in args.head_dims.split(",")):
                exercise(device, getattr(torch, name), d)
                if flex_available(device):
                    flex_verified(device, getattr(torch, name), d)
    routes = kernel_routes()
    routes["warnings"] = [str(w.message) for w in caught if "aia:" in str(w.message)]
    text = json.dumps(routes, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    failed = [case for case, verdict in routes["self_checks"].items() if verdict != "passed"]
    print(
        f"check_routes: {len(routes['self_checks'])} self-checks, {len(failed)} failed"
        + (f": {', '.join(failed)}" if failed else "")
    )


if __name__ == "__main__":
    main()
