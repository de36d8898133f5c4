#!/usr/bin/env python3
"""Compares the checked run of a foreign build with the native reference.

Lines are `index score` (surprise scores: same count, every score within
1e-5 relative) and `KIND index value`: `train` and `head` (the on-device
training demo's losses, full and head-only: same count, every loss within
1e-4 relative); `ram` (sizes on that target) and `time` lines are not
compared. With --no-train, OTHER must have no training losses and only
the scores are compared. Usage: check.py [--no-train] REFERENCE OTHER
LABEL. Exits 1 on any mismatch."""
import math
import sys

TOL = {"score": 1e-5, "train": 1e-4, "head": 1e-4}


def read(path):
    kinds = {}
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            kind, value = ("score", w[1]) if len(w) == 2 else (w[0], w[2])
            if kind in TOL:
                kinds.setdefault(kind, []).append(float(value))
    return kinds


args = sys.argv[1:]
no_train = args[0] == "--no-train"
if no_train:
    args = args[1:]
ref, other, label = read(args[0]), read(args[1]), args[2]
bad = False
if no_train:
    if "train" in other or "head" in other:
        print(f"MISMATCH ({label}): training losses where none were expected")
        sys.exit(1)
    ref = {"score": ref.get("score", [])}
if not ref.get("score"):
    print(f"MISMATCH ({label}): the reference has no scores")
    sys.exit(1)
for kind in TOL:
    r, o = ref.get(kind, []), other.get(kind, [])
    what = "scores" if kind == "score" else f"{kind} losses"
    if len(r) != len(o):
        print(f"{what} MISMATCH ({label}): {len(o)} values, reference has {len(r)}")
        bad = True
        continue
    if not r:
        continue
    worst = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(r, o))
    if not all(math.isfinite(x) for x in o) or worst > TOL[kind]:
        print(f"{what} MISMATCH ({label}): max relative difference {worst:.3e} > {TOL[kind]:.0e}")
        bad = True
        continue
    exact = "bit-identical as printed" if r == o else f"max relative difference {worst:.1e}"
    if kind == "score":
        print(f"scores match ({label}): {len(r)} scores, mean {sum(r) / len(r):.6f} nats, {exact}")
    else:
        print(f"{what} match ({label}): {len(r) - 1} steps, {r[0]:.6f} -> {r[-1]:.6f} nats, {exact}")
sys.exit(1 if bad else 0)
