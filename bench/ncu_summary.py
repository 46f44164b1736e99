#!/usr/bin/env python3
"""Sums kernel durations by kernel name from `ncu --csv --metrics gpu__time_duration.sum` output.

Usage: ncu --csv --metrics gpu__time_duration.sum ... > ncu.csv; python3 ncu_summary.py ncu.csv
Prints one row per kernel: launches, total and mean duration, and share of the total.
"""
import csv
import sys
from collections import defaultdict


def main(path):
    rows = []
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(rec["Metric Value"].replace(",", ""))
        unit = rec.get("Metric Unit", "nsecond")
        scale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(unit, 1e-3)
        rows.append((rec["Kernel Name"].split("(")[0], value * scale))
    total = sum(us for _, us in rows) or 1.0
    by_name = defaultdict(list)
    for name, us in rows:
        by_name[name].append(us)
    print(f"{len(rows)} launches, {total / 1e3:.2f} ms in all")
    print("| kernel | launches | total (ms) | mean (us) | share |")
    print("|---|---|---|---|---|")
    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1])):
        s = sum(times)
        print(f"| {name} | {len(times)} | {s / 1e3:.2f} | {s / len(times):.1f} | {100 * s / total:.1f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
