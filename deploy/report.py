#!/usr/bin/env python3
"""The on-device training RAM table and the JSON report lines of run.sh.

Reads RECORDS (one `model target form bss flash runfile` line per model,
target and form: form `full`, `head` or `serve` (a model that does not
train); `bss` the linker's .bss of the firmware linked for that form (`-`
on wasm), `flash` its code + rodata bytes (the .wasm file on wasm);
`runfile` that target's checked run, whose `ram part bytes` lines are the
parts' size_of on the target and whose `time` lines (wasm) are node's
medians). Prints a markdown table (RAM by part, the linker's .bss, the
ratio to MIT TinyEngine's 256 KB of SRAM) and then one JSON line per
model, target and form. Exits 1 if a firmware's .bss is not its parts
(the Stream plus the form's parts, up to 4 KiB of locks, flags and
alignment). Usage: report.py RECORDS"""
import json
import sys

TINYENGINE = 256 * 1024
PARTS = {"full": (1, 2, 3, 4), "head": (5, 6, 7, 8), "serve": ()}


def read_run(path):
    ram, times = {}, {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if len(w) == 3 and w[0] == "ram":
                ram[int(w[1])] = int(w[2])
            elif len(w) == 3 and w[0] == "time":
                times[w[1]] = float(w[2])
    return ram, times


bad = False
rows, lines = [], []
with open(sys.argv[1]) as f:
    for rec in f:
        if not rec.strip():
            continue
        model, target, form, bss, flash, runfile = rec.split()
        ram, times = read_run(runfile)
        p = [ram.get(i, 0) for i in PARTS[form]] or [0, 0, 0, 0]
        parts = {"params": p[0], "stream": ram.get(0, 0), "workspace": p[1], "grads": p[2], "optimizer": p[3]}
        total = sum(parts.values())
        if bss != "-":
            extra = int(bss) - total
            if not 0 <= extra <= 4096:
                print(f"{model} {target} {form}: .bss {bss} is not the parts' {total}", file=sys.stderr)
                bad = True
        weights = "int8" if model.endswith("int8") else "ternary" if model.endswith("ternary") else "f32"
        name = model if form != "head" else f"{model}[head]"
        wasm = target.startswith("wasm32")
        lines.append(json.dumps({
            "model": name,
            "target": target,
            "weights": weights,
            "step_us": times.get("step_us") if wasm else None,
            "train_step_ms": times.get(f"{'train' if form == 'full' else form}_step_ms") if wasm and form != "serve" else None,
            "ram_bytes": parts,
            "flash_bytes": int(flash),
            "tokens": None,
        }))
        if form != "serve":
            train = parts["params"] + parts["workspace"] + parts["grads"] + parts["optimizer"]
            rows.append(f"| {model} | {target} | {form} | {parts['params']:,} | {parts['workspace']:,} | {parts['grads']:,} "
                        f"| {parts['optimizer']:,} | {train:,} | {parts['stream']:,} | {bss if bss == '-' else f'{int(bss):,}'} "
                        f"| {train / TINYENGINE:.1f}x |")
print("| model | target | trains | params (RAM copy) | workspace | grads | optimizer (AdamW m, v) | training RAM | Stream | .bss (linker) | vs 256 KB |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
print("\n".join(rows))
print("\n".join(lines))
sys.exit(1 if bad else 0)
