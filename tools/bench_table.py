#!/usr/bin/env python3
"""Formats the bench's JSON lines (examples/bench.rs --json) as the README's
markdown table: one row per model, mode and thread count, the default and
the native build side by side (tokens/s, GFLOP/s, fraction of the measured
one-core FP32 peak), and the native build's speed relative to the default.

    python3 tools/bench_table.py default.1.jsonl default.2.jsonl native.1.jsonl native.2.jsonl

A file's build is read from its name (it must start with `default` or
`native`). Called by tools/bench_table.sh.
"""

import json
import os
import sys


def load(paths):
    rows = {}
    order = []
    basis = {}
    for path in paths:
        build = os.path.basename(path).split(".")[0]
        if build not in ("default", "native"):
            sys.exit(f"bench_table.py: {path}: the file name must start with default or native")
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                key = (r["name"], r["mode"], r["threads"])
                if key not in order:
                    order.append(key)
                rows[(build,) + key] = r
                basis[build] = r.get("peak_basis", "")
    return rows, order, basis


def cell(r):
    if r is None:
        return "-"
    if r["threads"] > 1:
        # The peak is one core's: show the throughput without a fraction.
        return f"{r['tok_s']:,.0f} ({r['gflops']:.1f})"
    return f"{r['tok_s']:,.0f} ({r['gflops']:.1f}, {100 * r['peak_fraction']:.0f}%)"


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    rows, order, basis = load(sys.argv[1:])
    mode_rank = {"train": 0, "serve": 1, "serve-n": 2}
    models = []
    for name, _, _ in order:
        if name not in models:
            models.append(name)
    order.sort(key=lambda k: (models.index(k[0]), mode_rank.get(k[1], 9), k[2]))
    print("| model | mode | threads | default build: tok/s (GFLOP/s, peak) | native build: tok/s (GFLOP/s, peak) | default / native |")
    print("|---|---|---:|---:|---:|---:|")
    for name, mode, threads in order:
        d = rows.get(("default", name, mode, threads))
        n = rows.get(("native", name, mode, threads))
        ratio = f"{d['tok_s'] / n['tok_s']:.0%}" if d and n else "-"
        shown = "serve-n (16 streams)" if mode == "serve-n" else mode
        print(f"| {name} | {shown} | {threads} | {cell(d)} | {cell(n)} | {ratio} |")
    print()
    for build in ("default", "native"):
        if build in basis:
            print(f"Peak ({build} build): {basis[build]}")


if __name__ == "__main__":
    main()
