#!/usr/bin/env python3
"""How far the CUDA backend's bf16 design puts the logits from the exact float64 reference,
and which of its roundings contribute.

A NumPy forward pass of the default model (SmolLM2-135M-Instruct, Q4_1 GGUF) repeats the GPU's
roundings: weights and the embedding table in bf16, norm outputs, GEMM outputs, the attention
output and SwiGLU rounded to bf16 (the residual stream stays f32), a bf16 KV cache, and f16
operands inside attention (q, k and the probabilities, as `attn_prefill_tc` uses them). Each
configuration is compared with the fixture's float64 logits: the last position's relative
error per case, the worst and mean absolute error on the reference's top-10 logits. The
configurations are: none of the roundings (f32), all of them, each group alone on top of f32,
and all of them in f16 instead of bf16.

    pip install numpy gguf
    python3 bench/bf16_numerics.py [--model PATH] [--fixture PATH] [--cases N] [--long]

About a minute on a CPU; with --long, which adds the fixture's 1,440-token sequence, several.
"""
import argparse
import json
import os
import sys
import time

import gguf
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MATS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]

# The quantities each group rounds (see `forward`).
GROUPS = {
    "weights": {"w"},
    "embedding (the tied LM head too)": {"emb"},
    "norm outputs": {"h", "fnorm"},
    "GEMM outputs (q, k, v, o, gate, up, down)": {"q", "k", "v", "o", "gate", "up", "down"},
    "attention output + SwiGLU": {"attn", "swiglu"},
    "KV cache": {"kv"},
    "f16 attention operands (q, k, probabilities)": {"qk16", "p16"},
}
ALL = set().union(*GROUPS.values())
CONFIGS = (
    [("float64, no rounding (checks this script)", np.float64, "bf16", set()),
     ("f32, no rounding", np.float32, "bf16", set()),
     ("**full bf16 design**", np.float32, "bf16", ALL)]
    + [(f"only {name}", np.float32, "bf16", group) for name, group in GROUPS.items()]
    + [("full design in f16 instead of bf16", np.float32, "f16", ALL)]
)


def bf16(a):
    """Round to bf16 (nearest, ties to even), kept in f32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def f16(a):
    return np.asarray(a, dtype=np.float32).astype(np.float16).astype(np.float32)


def default_model():
    if os.environ.get("INFINIHIP_MODEL"):
        return os.environ["INFINIHIP_MODEL"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "infinihip", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def load(path):
    """Hyperparameters and every tensor dequantised to float64; the LM head is tied when the
    file has no `output.weight`."""
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items() if k.startswith("llama.")}
    hp = dict(L=f["llama.block_count"], d=f["llama.embedding_length"],
              nh=f["llama.attention.head_count"], nkv=f["llama.attention.head_count_kv"],
              eps=float(f["llama.attention.layer_norm_rms_epsilon"]),
              theta=float(f["llama.rope.freq_base"]))
    W = {t.name: np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float64)
         for t in r.tensors}
    hp["tied"] = "output.weight" not in W
    return hp, W


class Weights:
    """The weights in a configuration's dtype and rounding, matrices transposed for `x @ w`;
    the last configuration's set is kept."""

    def __init__(self, hp, W):
        self.hp, self.W, self.key, self.w = hp, W, None, None

    def get(self, dt, fmt, rounded):
        key = (dt, fmt, "w" in rounded, "emb" in rounded)
        if key != self.key:
            rnd = bf16 if fmt == "bf16" else f16
            w = {}
            for name, a in self.W.items():
                a = a.astype(dt)
                mat = name.endswith(tuple(m + ".weight" for m in MATS))
                if (mat and "w" in rounded) or (name == "token_embd.weight" and "emb" in rounded):
                    a = rnd(a)
                w[name] = np.ascontiguousarray(a.T) if mat else a
            head = "emb" if self.hp["tied"] else "w"
            out = w["token_embd.weight"] if self.hp["tied"] else self.W["output.weight"].astype(dt)
            w["output.weight"] = np.ascontiguousarray((rnd(out) if head in rounded else out).T)
            self.key, self.w = key, w
        return self.w


def forward(hp, weights, ids, dt, fmt, rounded):
    """Logits at every position of `ids` (float64), rounding the quantities in `rounded`."""
    rnd = bf16 if fmt == "bf16" else f16
    r = lambda what, a: rnd(a) if what in rounded else a
    w = weights.get(dt, fmt, rounded)
    T, d, nh, nkv = len(ids), hp["d"], hp["nh"], hp["nkv"]
    hd, eps = d // nh, dt(hp["eps"])
    ang = np.arange(T)[:, None] * hp["theta"] ** (-np.arange(0, hd, 2) / hd)[None, :]
    cos, sin = np.cos(ang).astype(dt)[:, None, :], np.sin(ang).astype(dt)[:, None, :]

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x):  # [T, heads, hd], GGUF llama pairs (2i, 2i+1)
        y = np.empty_like(x)
        y[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
        y[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
        return y

    mask = np.triu(np.full((T, T), -np.inf, dtype=dt), 1)
    scale = dt(1 / np.sqrt(hd))
    x = w["token_embd.weight"][ids]
    for l in range(hp["L"]):
        p = f"blk.{l}."
        h = r("h", rms(x, w[p + "attn_norm.weight"]))
        q = r("q", h @ w[p + "attn_q.weight"]).reshape(T, nh, hd)
        k = r("kv", r("k", h @ w[p + "attn_k.weight"])).reshape(T, nkv, hd)
        v = r("kv", r("v", h @ w[p + "attn_v.weight"])).reshape(T, nkv, hd)
        q, k = rope(q), rope(k)  # the cache holds keys un-rotated
        if "qk16" in rounded:
            q, k = f16(q), f16(k)
        att = np.empty((T, nh, hd), dtype=dt)
        for head in range(nh):
            kv = head // (nh // nkv)
            s = q[:, head] @ k[:, kv].T * scale + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            prob = s / s.sum(-1, keepdims=True)
            att[:, head] = (f16(prob) if "p16" in rounded else prob) @ v[:, kv]
        x = x + r("o", r("attn", att.reshape(T, d)) @ w[p + "attn_output.weight"])
        h = r("h", rms(x, w[p + "ffn_norm.weight"]))
        g = r("gate", h @ w[p + "ffn_gate.weight"])
        u = r("up", h @ w[p + "ffn_up.weight"])
        x = x + r("down", r("swiglu", g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"])
    return (r("fnorm", rms(x, w["output_norm.weight"])) @ w["output.weight"]).astype(np.float64)


def top10_err(logits, top10_ids, top10_logits):
    return np.abs(np.take_along_axis(logits, np.array(top10_ids), 1) - np.array(top10_logits))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model(), help="the GGUF (default: $INFINIHIP_MODEL, "
                    "else the default model in the infinihip cache)")
    ap.add_argument("--fixture", default=os.path.join(HERE, "..", "testdata", "smollm2-135m-instruct-q4_1.json"))
    ap.add_argument("--cases", type=int, default=3, help="how many of the fixture's short cases")
    ap.add_argument("--long", action="store_true", help="also the fixture's long sequence")
    args = ap.parse_args()

    with open(args.fixture) as f:
        fx = json.load(f)
    cases = fx["logits"][:args.cases]
    hp, W = load(args.model)
    weights = Weights(hp, W)
    t0 = time.time()
    rows = []
    for name, dt, fmt, rounded in CONFIGS:
        rel, worst, mean = [], [], []
        for c in cases:
            lg = forward(hp, weights, c["ids"], dt, fmt, rounded)
            ref = np.array(c["last_logits"])
            rel.append(np.linalg.norm(lg[-1] - ref) / np.linalg.norm(ref))
            err = top10_err(lg, c["top10_ids"], c["top10_logits"])
            worst.append(err.max())
            mean.append(err.mean())
        row = [f"{e:.2e}" for e in rel] + [f"{e:.3f}" for e in worst] + [f"{np.mean(mean):.4f}"]
        if args.long:
            L = fx["long_logits"]
            lg = forward(hp, weights, L["ids"], dt, fmt, rounded)[L["positions"]]
            row.append(f"{top10_err(lg, L['top10_ids'], L['top10_logits']).max():.3f}")
        rows.append((name, row))
        print(f"{time.time() - t0:5.0f}s  {name}", file=sys.stderr, flush=True)

    n = [len(c["ids"]) for c in cases]
    cols = ([f"last-position rel. error, case {i} (T={t})" for i, t in enumerate(n)]
            + [f"worst top-10 abs. error, case {i}" for i in range(len(n))]
            + ["mean top-10 abs. error (all positions, all cases)"]
            + ([f"worst top-10 abs. error, long (T={len(fx['long_logits']['ids'])})"] if args.long else []))
    print("| configuration | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, row in rows:
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
