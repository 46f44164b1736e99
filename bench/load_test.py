#!/usr/bin/env python3
"""Load benchmark of `infinihip serve` on loopback: throughput, time to first token and
inter-token latency against the number of concurrent streaming clients.

Standard library only. Starts the server itself (`--binary`, on a free loopback port, stopped
at the end) or measures one already running (`--url`). For each concurrency level C, C client
threads send streaming chat completions back to back until the level's request count is done
or its time limit passes; every request asks for exactly `--max-tokens` tokens
(`ignore_eos`), so each level does the same work per request.

Per level it reports: output tokens/s over the level's wall time, requests/s, and p50/p99 of
the time to first token (request sent → first content chunk) and of the inter-token latency
(gap between consecutive content chunks of one stream; a chunk carries one token's text).

    cargo build --release
    python3 bench/load_test.py --binary target/release/infinihip --json docs/bench/serve-cpu.json
"""

import argparse
import http.client
import json
import re
import subprocess
import sys
import threading
import time
import urllib.parse

TOPICS = ["rivers", "stars", "bread", "trains", "owls", "glass", "rain", "chess", "maps", "bees", "clocks", "salt"]


def percentile(values, p):
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


def drain(stream):
    for _ in stream:
        pass


def start_server(binary, extra_args):
    """Starts `infinihip serve` on a free loopback port; returns (process, base_url)."""
    cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", *extra_args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    for line in proc.stderr:
        sys.stderr.write(line)
        match = re.search(r"on (http://[0-9.]+:[0-9]+)/v1", line)
        if match:
            # Keep draining the log (one line per request) so the server never blocks on it.
            threading.Thread(target=drain, args=(proc.stderr,), daemon=True).start()
            return proc, match.group(1)
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit("load_test: the server did not start")


def stream_one(base, index, max_tokens, timeout):
    """One streaming chat completion; returns (ttft_s, [gaps_s], completion_tokens)."""
    url = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": f"Tell me about {TOPICS[index % len(TOPICS)]}."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "seed": index,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    sent = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
    first, last, gaps, tokens = None, None, [], 0
    for raw in response:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            if choice["delta"].get("content"):
                now = time.perf_counter()
                if first is None:
                    first = now - sent
                else:
                    gaps.append(now - last)
                last = now
    conn.close()
    return first, gaps, tokens


def run_level(base, concurrency, requests, max_tokens, time_limit):
    lock = threading.Lock()
    state = {"next": 0, "ttft": [], "itl": [], "tokens": 0, "done": 0, "errors": []}
    start = time.perf_counter()

    def client():
        while True:
            with lock:
                if state["next"] >= requests or time.perf_counter() - start > time_limit:
                    return
                index = state["next"]
                state["next"] += 1
            try:
                ttft, gaps, tokens = stream_one(base, index, max_tokens, timeout=time_limit + 60)
            except Exception as e:  # a failed request is reported, not fatal
                with lock:
                    state["errors"].append(str(e))
                continue
            with lock:
                if ttft is not None:
                    state["ttft"].append(ttft)
                state["itl"].extend(gaps)
                state["tokens"] += tokens
                state["done"] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "concurrency": concurrency,
        "requests": state["done"],
        "errors": len(state["errors"]),
        "first_errors": state["errors"][:3],
        "wall_s": wall,
        "output_tokens": state["tokens"],
        "output_tokens_per_s": state["tokens"] / wall,
        "requests_per_s": state["done"] / wall,
        "ttft_p50_s": percentile(state["ttft"], 50),
        "ttft_p99_s": percentile(state["ttft"], 99),
        "itl_p50_s": percentile(state["itl"], 50),
        "itl_p99_s": percentile(state["itl"], 99),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--binary", help="infinihip binary to start (serve on a free loopback port)")
    target.add_argument("--url", help="base URL of a running server, e.g. http://127.0.0.1:8000")
    parser.add_argument("--concurrency", default="1,4,16,64", help="comma-separated client counts")
    parser.add_argument("--requests", type=int, default=0, help="requests per level [default: max(8, 2 x clients)]")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per level before no new request starts")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    proc = None
    if args.binary:
        proc, base = start_server(args.binary, args.server_arg)
    else:
        base = args.url.rstrip("/")
    try:
        stream_one(base, 0, 2, timeout=300)  # warm-up
        results = []
        for c in [int(x) for x in args.concurrency.split(",")]:
            requests = args.requests or max(8, 2 * c)
            r = run_level(base, c, requests, args.max_tokens, args.time_limit)
            results.append(r)
            print(
                f"c={c}: {r['requests']} requests ({r['errors']} errors) in {r['wall_s']:.1f} s, "
                f"{r['output_tokens_per_s']:.1f} tokens/s",
                file=sys.stderr,
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)

    print("| clients | requests | output tokens/s | requests/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['concurrency']} | {r['requests']} | {r['output_tokens_per_s']:.1f} | {r['requests_per_s']:.2f} "
            f"| {r['ttft_p50_s'] * 1000:.0f} ms | {r['ttft_p99_s'] * 1000:.0f} ms "
            f"| {r['itl_p50_s'] * 1000:.0f} ms | {r['itl_p99_s'] * 1000:.0f} ms |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_tokens": args.max_tokens, "server_args": args.server_arg, "levels": results}, f, indent=2)
            f.write("\n")
    if any(r["errors"] for r in results):
        sys.exit("load_test: some requests failed (see the JSON or the errors above)")


if __name__ == "__main__":
    main()
