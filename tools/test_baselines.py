"""Tests for tools/baselines.py.

Run with `python3 -m pytest tools/test_baselines.py`, or without pytest with
`python3 tools/test_baselines.py`.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import baselines  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "baselines.py")
TINY = b"the cat sat on the mat; the cat ate the rat."


def test_distributions_sum_to_one():
    contexts = [b"", b"t", b"th", b"the", b" the", b"the c", b"cat s", b"zzzz",
                b"\x00\xff", b"e mat", b"qthe "]
    for order in range(1, 6):
        model = baselines.NGramModel(TINY, order)
        for ctx in contexts:
            dist = model.distribution(ctx)
            assert all(p > 0.0 for p in dist), (order, ctx)
            assert math.isclose(sum(dist), 1.0, rel_tol=0, abs_tol=1e-12), (
                order, ctx, sum(dist))


def test_level_probs_match_lower_order_models():
    full = baselines.NGramModel(TINY, 5)
    for order in range(1, 6):
        model = baselines.NGramModel(TINY, order)
        for ctx in (b"the c", b" on t", b"xyz a"):
            for b in b"a t;q":
                assert math.isclose(full.level_probs(ctx, b)[order - 1],
                                    model.prob(ctx, b), rel_tol=1e-12)


def test_hand_computed_abab_order2():
    # train "abab", order 2, D = 0.75.
    # Unigram: c(a) = 2, c(b) = 2, total 4, N1+ = 2:
    #   P1(a) = (2 - 0.75)/4 + 0.75*2/4 * 1/256 = 0.3125 + 0.375/256
    #         = 0.3125 + 0.00146484375 = 0.31396484375
    # Bigrams (context inside train): "ab", "ba", "ab". Context "b" is followed
    # only by "a", once (the final "b" has no successor): c(b) = 1, N1+(b) = 1:
    #   P2(a | b) = (1 - 0.75)/1 + 0.75*1/1 * P1(a) = 0.25 + 0.75*0.31396484375
    #             = 0.25 + 0.2354736328125 = 0.4854736328125
    # Context "a": c(a) = 2 (both followed by "b"), N1+(a) = 1:
    #   P2(a | a) = 0 + 0.75*1/2 * P1(a) = 0.375 * 0.31396484375 = 0.11773681640625
    # Unseen context "z" falls through with weight 1: P2(a | z) = P1(a).
    model = baselines.NGramModel(b"abab", 2)
    assert math.isclose(model.prob(b"b", ord("a")), 0.4854736328125, rel_tol=1e-15)
    assert math.isclose(model.prob(b"a", ord("a")), 0.11773681640625, rel_tol=1e-15)
    assert math.isclose(model.prob(b"z", ord("a")), 0.31396484375, rel_tol=1e-15)
    assert math.isclose(model.prob(b"", ord("a")), 0.31396484375, rel_tol=1e-15)


def test_periodic_text_is_predicted():
    data = b"hello world, hold the wheel. " * 400
    split = baselines.train_split(len(data))
    bpb = baselines.ngram_bits_per_byte(data, split, 5)
    assert bpb[4] < 0.1, bpb  # 4-byte context determines the next byte
    assert bpb[0] > 2.0, bpb  # while the unigram cannot


def test_train_split_matches_train_rs():
    assert baselines.train_split(912149) == 820934
    assert baselines.train_split(1024) == 921
    assert baselines.train_split(10) == 9


def test_xz_on_random_bytes_is_near_8_bits():
    rng = random.Random(1234)
    data = rng.randbytes(40000)
    split = baselines.train_split(len(data))
    cond = baselines.xz_conditional_bits_per_byte(data[:split], data[split:])
    alone = baselines.xz_alone_bits_per_byte(data[split:])
    assert cond > 7.5, cond
    assert alone > 7.5, alone


def test_cli_rejects_small_and_missing_corpus():
    with tempfile.TemporaryDirectory() as tmp:
        small = os.path.join(tmp, "small.txt")
        with open(small, "wb") as f:
            f.write(b"x" * 1000)
        for path in (small, os.path.join(tmp, "missing.txt"), tmp):
            r = subprocess.run([sys.executable, SCRIPT, "--corpus", path],
                               capture_output=True, text=True)
            assert r.returncode != 0, path
            assert r.stdout == "", path
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_cli_json_rows():
    import json
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "c.txt")
        with open(path, "wb") as f:
            f.write(TINY * 100)
        r = subprocess.run([sys.executable, SCRIPT, "--corpus", path, "--json"],
                           capture_output=True, text=True, check=True)
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        assert len(rows) == 7
        assert all(0.0 <= row["bits_per_byte"] < 9.0 for row in rows)
        assert rows[0]["train_bytes"] == baselines.train_split(len(TINY) * 100)


if __name__ == "__main__":
    failed = 0
    for name, fn in sorted(globals().items()):
        if name.startswith("test_") and callable(fn):
            try:
                fn()
                print(f"ok   {name}")
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(f"FAIL {name}: {e!r}")
    sys.exit(1 if failed else 0)
