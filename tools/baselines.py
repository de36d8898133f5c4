#!/usr/bin/env python3
"""Reference baselines (held-out bits per byte) for the README's comparison table.

Standard library only (Python 3.11+).

Usage:
    python3 tools/baselines.py [--corpus PATH] [--json]

Defaults:
    --corpus = <repo>/data/corpus.txt (the repository root is the parent of this
               script's directory)

The split is exactly the one of examples/train.rs (`train_split`):
    split    = floor(len(data) * (1.0 - 0.10))
    train    = data[:split]
    held-out = data[split:]

Baselines:
  * byte n-gram models of order 1..5 (order n = a context of n-1 bytes) with
    interpolated absolute discounting, D = 0.75 (plain counts at every level, not
    Kneser-Ney continuation counts):

        P_n(b | ctx) = max(c(ctx, b) - D, 0) / c(ctx)
                       + D * N1+(ctx, .) / c(ctx) * P_{n-1}(b | ctx[1:])

    where c(ctx) = sum_b c(ctx, b) and N1+(ctx, .) = number of distinct bytes seen
    after ctx. The recursion ends at the unigram (empty context), interpolated the
    same way with the uniform distribution over the 256 byte values. A context
    never seen in training falls through to the shorter context with weight 1.
    Counts come from the training part only and are not updated on held-out.
    Every held-out byte is scored, from held-out position 0; its context is the
    preceding bytes of the corpus, so for the first n-1 held-out bytes it reaches
    back into the end of the training part (the held-out text is a continuation).
  * xz (lzma, preset 9 | PRESET_EXTREME), conditional on the training text:
        (len(xz(train + held_out)) - len(xz(train))) * 8 / len(held_out)
    and, for completeness, held-out alone: len(xz(held_out)) * 8 / len(held_out).

Output: a header with the corpus path, sizes and split, then a markdown table
`| baseline | held-out bits/byte |`; with --json, one JSON object per row instead
(each row also carries the corpus path and sizes).
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import sys
import time
from collections import Counter

HELD_OUT_FRACTION = 0.10  # as HELD_OUT_FRACTION in examples/train.rs
DISCOUNT = 0.75
MIN_CORPUS_BYTES = 1024
XZ_PRESET = 9 | lzma.PRESET_EXTREME
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CORPUS = os.path.join(REPO_ROOT, "data", "corpus.txt")


def train_split(length: int) -> int:
    """Index of the first held-out byte, as `train_split` in examples/train.rs
    (the same IEEE double operations: floor(len * (1.0 - 0.10)))."""
    return math.floor(float(length) * (1.0 - HELD_OUT_FRACTION))


class NGramModel:
    """Byte n-gram model with interpolated absolute discounting.

    `order` n uses contexts of up to n-1 bytes. Tables for context length m
    (0 <= m < order): counts[m][ctx + b] = c(ctx, b) and stats[m][ctx] =
    (c(ctx), N1+(ctx, .)), with len(ctx) = m.
    """

    def __init__(self, train: bytes, order: int, discount: float = DISCOUNT):
        if order < 1:
            raise ValueError(f"order must be >= 1, got {order}")
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        self.order = order
        self.discount = discount
        self.counts: list[Counter] = []
        self.stats: list[dict[bytes, tuple[int, int]]] = []
        n = len(train)
        for m in range(order):
            # every (m+1)-gram of train whose m-byte context lies inside train
            counts = Counter(train[i - m : i + 1] for i in range(m, n))
            totals: Counter = Counter()
            distinct: Counter = Counter()
            for gram, c in counts.items():
                ctx = gram[:-1]
                totals[ctx] += c
                distinct[ctx] += 1
            self.counts.append(counts)
            self.stats.append({ctx: (totals[ctx], distinct[ctx]) for ctx in totals})

    def level_probs(self, context: bytes, b: int) -> list[float]:
        """[P_1(b | .), P_2(b | .), ..., P_order(b | .)]: the probability of byte
        `b` under the models of order 1..self.order, each using the last (k-1)
        bytes of `context`. A context shorter than k-1 bytes (start of the
        text) is treated like an unseen context: weight 1 on the shorter one."""
        d = self.discount
        p = 1.0 / 256.0
        out = []
        nb = bytes((b,))
        lc = len(context)
        for m in range(self.order):
            if m <= lc:
                ctx = context[lc - m :]
                st = self.stats[m].get(ctx)
                if st is not None:
                    tot, n1 = st
                    c = self.counts[m].get(ctx + nb, 0)
                    p = max(c - d, 0.0) / tot + d * n1 / tot * p
            out.append(p)
        return out

    def prob(self, context: bytes, b: int) -> float:
        """P(b | context) under the full-order model."""
        return self.level_probs(context, b)[-1]

    def distribution(self, context: bytes) -> list[float]:
        """P(b | context) for b = 0..255."""
        return [self.prob(context, b) for b in range(256)]


def ngram_bits_per_byte(data: bytes, split: int, max_order: int = 5,
                        discount: float = DISCOUNT) -> list[float]:
    """Held-out bits/byte of the n-gram models of order 1..max_order trained on
    data[:split], scoring every byte of data[split:] with its preceding bytes
    (reaching back into the training part) as context."""
    if not 0 < split < len(data):
        raise ValueError(f"split {split} must be inside (0, {len(data)})")
    model = NGramModel(data[:split], max_order, discount)
    sums = [0.0] * max_order
    log2 = math.log2
    back = max_order - 1
    for j in range(split, len(data)):
        probs = model.level_probs(data[max(0, j - back) : j], data[j])
        for k, p in enumerate(probs):
            sums[k] -= log2(p)
    n = len(data) - split
    return [s / n for s in sums]


def xz_len(data: bytes) -> int:
    return len(lzma.compress(data, preset=XZ_PRESET))


def xz_conditional_bits_per_byte(train: bytes, held_out: bytes) -> float:
    """Extra xz-compressed bits per held-out byte when appended to train."""
    return (xz_len(train + held_out) - xz_len(train)) * 8 / len(held_out)


def xz_alone_bits_per_byte(held_out: bytes) -> float:
    """xz-compressed bits per byte of held-out alone (no training context)."""
    return xz_len(held_out) * 8 / len(held_out)


def compute_rows(data: bytes) -> list[tuple[str, float]]:
    split = train_split(len(data))
    train, held_out = data[:split], data[split:]
    rows = []
    names = ["unigram (order 1)"] + [
        f"byte {n}-gram ({n - 1}-byte context)" for n in range(2, 6)
    ]
    for name, bpb in zip(names, ngram_bits_per_byte(data, split, 5)):
        rows.append((f"{name}, interpolated abs. discounting D={DISCOUNT}", bpb))
    rows.append(("xz -9e, conditional on train (train+held-out minus train)",
                 xz_conditional_bits_per_byte(train, held_out)))
    rows.append(("xz -9e, held-out alone", xz_alone_bits_per_byte(held_out)))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Held-out bits/byte of n-gram and xz baselines on the "
                    "examples/train.rs split of the corpus.")
    ap.add_argument("--corpus", default=DEFAULT_CORPUS,
                    help="corpus file (default: %(default)s)")
    ap.add_argument("--json", action="store_true",
                    help="print one JSON object per row instead of the table")
    args = ap.parse_args(argv)

    try:
        with open(args.corpus, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"baselines: cannot read corpus {args.corpus}: "
              f"{e.strerror or e}", file=sys.stderr)
        return 1
    if len(data) < MIN_CORPUS_BYTES:
        print(f"baselines: corpus {args.corpus} is too small: {len(data)} bytes "
              f"(need at least {MIN_CORPUS_BYTES})", file=sys.stderr)
        return 1

    t0 = time.monotonic()
    rows = compute_rows(data)
    elapsed = time.monotonic() - t0
    split = train_split(len(data))
    held = len(data) - split

    if args.json:
        for name, bpb in rows:
            print(json.dumps({
                "baseline": name,
                "bits_per_byte": round(bpb, 4),
                "corpus": args.corpus,
                "corpus_bytes": len(data),
                "train_bytes": split,
                "held_out_bytes": held,
            }))
        return 0

    print(f"corpus {args.corpus}: {len(data)} bytes; train = bytes [0, {split}) "
          f"({split} bytes), held-out = bytes [{split}, {len(data)}) ({held} bytes); "
          f"split = floor(len * 0.9) as in examples/train.rs")
    print(f"(n-gram counts from train only; every held-out byte is scored from "
          f"held-out position 0, its context reaching back into the end of train: "
          f"the held-out text is a continuation; {elapsed:.1f} s)")
    print()
    print("| baseline | held-out bits/byte |")
    print("|---|---|")
    for name, bpb in rows:
        print(f"| {name} | {bpb:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
