#!/usr/bin/env python3
"""Compares surprise scores (`index score` lines) of a foreign build with the
native reference: same count, every score within 1e-5 relative.
Usage: check.py REFERENCE OTHER LABEL. Exits 1 on any mismatch."""
import math
import sys


def read(path):
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    return [float(x) for _, x in rows]


ref, other, label = read(sys.argv[1]), read(sys.argv[2]), sys.argv[3]
if not ref or len(ref) != len(other):
    print(f"scores MISMATCH ({label}): {len(other)} scores, reference has {len(ref)}")
    sys.exit(1)
worst = max(abs(a - b) / max(abs(a), 1e-30) for a, b in zip(ref, other))
if not all(math.isfinite(x) for x in other) or worst > 1e-5:
    print(f"scores MISMATCH ({label}): max relative difference {worst:.3e} > 1e-5")
    sys.exit(1)
exact = "bit-identical as printed" if ref == other else f"max relative difference {worst:.1e}"
print(f"scores match ({label}): {len(ref)} scores, mean {sum(ref) / len(ref):.6f} nats, {exact}")
