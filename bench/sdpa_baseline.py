#!/usr/bin/env python3
"""External dense baselines for `infinihip bench attention`: PyTorch's
scaled_dot_product_attention with its FlashAttention-2 and cuDNN backends (enable_gqa=True),
on the same shapes, timed the same way (CUDA events, L2 flushed before each repetition, the
median of --reps), written in the same JSON row format so that
`infinihip bench attention --merge FILE` puts them in one table and plot.

A tool, not part of the product: run it with the GPU machine's own python3 (PyTorch >= 2.5).

Cases: one layer; `batch` sequences of `context` keys; 1 query per sequence (decode) or
`--prefill-queries` queries at the end of the context (prefill chunk, causal with the mask
aligned to the bottom right, `causal_lower_right`). Keys and values are bf16 `[B, Hkv, T, d]`,
queries `[B, H, n_q, d]`, uniform in +-1. Before timing, each backend is checked against a
float64 CPU reference on a small random case (relative L2 error <= 1e-2).
"""
import argparse
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

SHAPES = {"llama8b": (32, 8, 128), "smollm2": (9, 3, 64)}
BACKENDS = {"torch-sdpa-flash": SDPBackend.FLASH_ATTENTION, "torch-sdpa-cudnn": SDPBackend.CUDNN_ATTENTION}
FLOOR_BYTES_PER_S, FLOOR_FLOPS_PER_S = 3.0e12, 840e12


def parse_len(s):
    s = s.strip().lower()
    mult = {"k": 1 << 10, "m": 1 << 20}.get(s[-1:], 1)
    return int(s[:-1] if mult > 1 else s) * mult


def sdpa(backend, q, k, v, causal):
    mask = causal_lower_right(q.shape[-2], k.shape[-2]) if causal else None
    with sdpa_kernel([backend]):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def reference(q, k, v):
    """float64 attention on the CPU, causal aligned to the bottom right."""
    q, k, v = (t.double().cpu() for t in (q, k, v))
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    n_q, n_k = q.shape[-2], k.shape[-2]
    qi = torch.arange(n_q).unsqueeze(1) + (n_k - n_q)
    s = s.masked_fill(torch.arange(n_k).unsqueeze(0) > qi, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def rand(*shape):
    # In place: `torch.rand(...) * 2 - 1` would hold three copies of a 32 GiB tensor at once.
    return torch.empty(*shape, device="cuda", dtype=torch.bfloat16).uniform_(-1, 1)


def check(name, backend, heads):
    h, hkv, d = heads
    torch.manual_seed(torch.seed())
    for n_q in (1, 128):
        q, k, v = rand(2, h, n_q, d), rand(2, hkv, 3000, d), rand(2, hkv, 3000, d)
        out = sdpa(backend, q, k, v, causal=n_q > 1).double().cpu()
        ref = reference(q, k, v)
        err = ((out - ref).norm() / ref.norm()).item()
        print(f"  check {name} {heads} queries {n_q}: rel err {err:.2e}", file=sys.stderr)
        if not err <= 1e-2:
            raise SystemExit(f"{name} differs from the float64 reference: {err:.2e}")


def time_us(fn, flush, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        flush.zero_()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def floor_us(batch, context, n_q, heads):
    h, hkv, d = heads
    bytes_ = batch * context * hkv * d * 2 * 2
    flops = 4 * batch * n_q * (context - (n_q - 1) / 2) * h * d
    return max(bytes_ / FLOOR_BYTES_PER_S, flops / FLOOR_FLOPS_PER_S) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="32k,128k,256k,512k,1m,2m,3m")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--shapes", default="llama8b,smollm2")
    ap.add_argument("--prefill-queries", type=int, default=1024)
    ap.add_argument("--prefill-max-batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--prefill-reps", type=int, default=5)
    ap.add_argument("--json", required=True)
    a = ap.parse_args()
    contexts = [parse_len(c) for c in a.contexts.split(",")]
    batches = [int(b) for b in a.batches.split(",")]
    shapes = a.shapes.split(",")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", file=sys.stderr)
    for shape in shapes:
        for name, backend in BACKENDS.items():
            check(name, backend, SHAPES[shape])
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    rows = []
    for shape in shapes:
        heads = SHAPES[shape]
        h, hkv, d = heads
        for batch in batches:
            for context in contexts:
                phases = [("decode", 1)]
                if a.prefill_queries > 0 and batch <= a.prefill_max_batch:
                    phases.append(("prefill_chunk", min(a.prefill_queries, context)))
                need = 2 * batch * context * hkv * d * 2
                free, _ = torch.cuda.mem_get_info()
                if need + (4 << 30) > free:
                    print(f"  skip {shape} batch {batch} context {context}: {need / 2**30:.1f} GiB", file=sys.stderr)
                    continue
                k, v = rand(batch, hkv, context, d), rand(batch, hkv, context, d)
                for phase, n_q in phases:
                    q = rand(batch, h, n_q, d)
                    for name, backend in BACKENDS.items():
                        try:
                            warmup, reps = (a.warmup, a.reps) if n_q == 1 else (1, a.prefill_reps)
                            lat = time_us(lambda: sdpa(backend, q, k, v, causal=n_q > 1), flush, warmup, reps)
                        except RuntimeError as e:
                            print(f"  {name} {shape} b{batch} {context} {phase}: {str(e).splitlines()[0]}", file=sys.stderr)
                            continue
                        row = dict(phase=phase, context=context, batch=batch, q_heads=h, kv_heads=hkv, head_dim=d,
                                   method=name, latency_us=lat, queries=n_q,
                                   floor_us=floor_us(batch, context, n_q, heads))
                        print(f"  {phase:<13} {shape:<8} b{batch} q{n_q} {context:>8} {name:<17} {lat:12.1f} us",
                              file=sys.stderr)
                        rows.append(row)
                    del q
                del k, v
                torch.cuda.empty_cache()
    report = dict(device=torch.cuda.get_device_name(), commit="(bench/sdpa_baseline.py)",
                  command=" ".join(["python3"] + sys.argv), torch=torch.__version__, rows=rows)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
