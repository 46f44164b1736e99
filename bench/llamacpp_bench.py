#!/usr/bin/env python3
"""Prefill and decode speed of llama.cpp (through llama-cpp-python) on a GGUF model.

Mirrors `infinihip bench cpu`: a prompt of N tokens of the same filler text is evaluated in
one batch (prefill), then M single-token steps each feed the greedy choice of the previous one
(decode). Each repetition starts from an empty cache; medians are reported.

    python3 bench/llamacpp_bench.py --model PATH --prompt-tokens 512 --gen-tokens 128 --threads 2
"""
import argparse
import json
import statistics
import sys
import time

FILLER = (
    "The history of the region is long and varied. Farmers settled the river valleys "
    "first, and later traders built towns where the roads crossed. Each century brought new tools, new "
    "crops and new ideas, and the libraries of the towns grew with them. "
)


def last_argmax(llm) -> int:
    """Greedy choice from the logits of the last evaluated token (the only row llama.cpp keeps)."""
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(logits.argmax())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write results to this file")
    args = ap.parse_args()

    try:
        from llama_cpp import Llama
        import llama_cpp
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python", file=sys.stderr)
        return 2

    n_ctx = args.prompt_tokens + args.gen_tokens + 16
    llm = Llama(
        model_path=args.model,
        n_ctx=n_ctx,
        n_batch=args.prompt_tokens,
        n_ubatch=args.prompt_tokens,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    unit = llm.tokenize(FILLER.encode(), add_bos=False, special=False)
    prompt = (unit * (args.prompt_tokens // len(unit) + 1))[: args.prompt_tokens]

    prefill, decode = [], []
    for rep in range(args.reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        t1 = time.perf_counter()
        token = last_argmax(llm)
        for _ in range(args.gen_tokens):
            llm.eval([token])
            token = last_argmax(llm)
        t2 = time.perf_counter()
        prefill.append(args.prompt_tokens / (t1 - t0))
        decode.append(args.gen_tokens / (t2 - t1) if args.gen_tokens else float("nan"))
        print(f"  rep {rep + 1}: prefill {prefill[-1]:.1f} tokens/s, decode {decode[-1]:.1f} tokens/s", file=sys.stderr)

    result = {
        "engine": "llama.cpp",
        "llama_cpp_python": llama_cpp.__version__,
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "reps": args.reps,
        "prefill_tokens_per_s": prefill,
        "decode_tokens_per_s": decode,
        "prefill_median": statistics.median(prefill),
        "decode_median": statistics.median(decode),
    }
    print("| backend | threads | prompt | prefill tokens/s | decode tokens/s |")
    print("|---|---|---|---|---|")
    print(f"| llama.cpp {llama_cpp.__version__} | {args.threads} | {args.prompt_tokens} | "
          f"{result['prefill_median']:.1f} | {result['decode_median']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
