#!/usr/bin/env python3
"""infinihip against llama.cpp on the CPU, alternating runs so that both see the same machine.

Each round runs `infinihip bench cpu` and `bench/llamacpp_bench.py` once (each with --reps 1)
on the same GGUF, prompt length, decode length and thread count; the medians over the rounds
are reported, with the ratio. llama.cpp comes from llama-cpp-python (pip install
llama-cpp-python builds it for this machine).

    python3 bench/compare_cpu.py --rounds 5 --prompt-tokens 512 --gen-tokens 128 \
        [--infinihip target/release/infinihip] [--model PATH] [--threads 2] [--json out.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd):
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run(cmd + ["--json", f.name], check=True, stdout=subprocess.DEVNULL)
        with open(f.name) as g:
            return json.load(g)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--infinihip", default=os.path.join(HERE, "..", "target", "release", "infinihip"))
    ap.add_argument("--model", help="GGUF file (default: infinihip's default model)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write all runs and the medians to this file")
    args = ap.parse_args()

    model = args.model or subprocess.run(
        [args.infinihip, "fetch"], check=True, capture_output=True, text=True
    ).stdout.strip()
    sizes = ["--prompt-tokens", str(args.prompt_tokens), "--gen-tokens", str(args.gen_tokens), "--reps", "1"]
    ours_cmd = [args.infinihip, "bench", "cpu", "--model", model, "--threads", str(args.threads)] + sizes
    theirs_cmd = [sys.executable, os.path.join(HERE, "llamacpp_bench.py"), "--model", model,
                  "--threads", str(args.threads)] + sizes

    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(run_json(ours_cmd))
        theirs.append(run_json(theirs_cmd))
        print(f"round {r + 1}: infinihip prefill {ours[-1]['prefill_median']:.1f} decode {ours[-1]['decode_median']:.1f} | "
              f"llama.cpp prefill {theirs[-1]['prefill_median']:.1f} decode {theirs[-1]['decode_median']:.1f} tokens/s",
              file=sys.stderr)

    def med(runs, key):
        return statistics.median(x[key] for x in runs)

    summary = {
        "model": os.path.basename(model),
        "threads": args.threads,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "rounds": args.rounds,
        "infinihip": {"prefill": med(ours, "prefill_median"), "decode": med(ours, "decode_median"), "commit": ours[0]["commit"]},
        "llama_cpp": {"prefill": med(theirs, "prefill_median"), "decode": med(theirs, "decode_median"),
                      "version": theirs[0]["llama_cpp_python"]},
    }
    summary["decode_ratio"] = summary["infinihip"]["decode"] / summary["llama_cpp"]["decode"]
    summary["prefill_ratio"] = summary["infinihip"]["prefill"] / summary["llama_cpp"]["prefill"]
    print("| engine | prefill tokens/s | decode tokens/s |")
    print("|---|---|---|")
    print(f"| infinihip ({summary['infinihip']['commit']}) | {summary['infinihip']['prefill']:.1f} | {summary['infinihip']['decode']:.1f} |")
    print(f"| llama.cpp {summary['llama_cpp']['version']} | {summary['llama_cpp']['prefill']:.1f} | {summary['llama_cpp']['decode']:.1f} |")
    print(f"| ratio | {summary['prefill_ratio']:.2f} | {summary['decode_ratio']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "infinihip_runs": ours, "llama_cpp_runs": theirs}, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
