"""Tests of an nl model's Python module (nl-python: PyO3 + numpy).

Run against a built and installed extension module (docs/python.md):

    NL_PY_MODULE=nl_tiny python3 -m pytest -q tests/python/test_model.py

Environment:
- NL_PY_MODULE: the module to import (e.g. `nl_tiny`); every test is skipped
  without it.
- NL_OTHER_CHECKPOINT: a checkpoint of *another* spec (loading it must fail
  with ValueError naming the spec); that test is skipped without it.
- NL_CHECKPOINT, NL_SERVE_TEXT, NL_SERVE_JSONL: a checkpoint of this spec, a
  text file and the JSON lines of the Rust `serve` command on that text
  (`{"i": i, "byte": text[i], "bits": b}` from i = 1); the stream's
  surprises must agree to 1e-5 bits. NL_EVAL_JSON (with NL_CHECKPOINT and
  NL_SERVE_TEXT): a JSON object whose "stream_bits_per_byte" must equal the
  mean of `feed` to 1e-6.
"""

import importlib
import json
import math
import os
import struct

import numpy as np
import pytest

MODULE_NAME = os.environ.get("NL_PY_MODULE")
if not MODULE_NAME:
    pytest.skip(
        "NL_PY_MODULE is not set: build and install a model's wheel (docs/python.md), "
        "then run with NL_PY_MODULE=nl_<name>",
        allow_module_level=True,
    )
nl = importlib.import_module(MODULE_NAME)


# ---------------------------------------------------------------- helpers


def spec_values(text):
    """The spec's keys as Python values (tomllib where available, else the
    top-level `key = value` lines, enough for the numbers checked here)."""
    try:
        import tomllib

        return tomllib.loads(text)
    except ImportError:  # Python < 3.11
        out = {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("["):
                break
            if "=" in line:
                k, v = (s.strip() for s in line.split("=", 1))
                try:
                    out[k] = int(v)
                except ValueError:
                    out[k] = v.strip('"')
        return out


def rng_tokens(model, rng, rows=None):
    shape = (model.seq_len + 1,) if rows is None else (rows, model.seq_len + 1)
    return rng.integers(0, model.vocab, size=shape)


def perturbed(model, rng, scale=0.05):
    """The model's parameters plus a little noise (so no gradient is zero by symmetry)."""
    return {k: v + scale * rng.standard_normal(v.shape) for k, v in model.params().items()}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def model():
    return nl.Model(seed=3)


@pytest.fixture
def model64(rng):
    m = nl.Model(seed=3, dtype="float64")
    m.set_params(perturbed(m, rng))
    return m


# ---------------------------------------------------------------- attributes


def test_attributes_match_spec(model):
    spec = spec_values(model.spec)
    assert model.d_model == spec["d_model"]
    assert model.heads == spec["heads"]
    assert model.vocab == spec["vocab"]
    assert model.seq_len == spec["seq_len"]
    assert model.window == spec.get("window", model.seq_len)
    assert model.layers == spec.get("layers", 1)
    levels = spec.get("memory", {}).get("levels", []) if isinstance(spec.get("memory"), dict) else []
    assert model.levels == len(levels)
    if "name" in spec:
        assert model.name == spec["name"]
    assert MODULE_NAME == "nl_" + model.name
    import hashlib

    assert model.spec_sha256 == hashlib.sha256(model.spec.encode()).hexdigest()
    assert model.dtype == "float32"
    assert nl.Model(dtype="float64").dtype == "float64"
    tensors = model.tensors
    assert isinstance(tensors, dict) and all(isinstance(s, tuple) for s in tensors.values())
    assert sum(math.prod(s) for s in tensors.values()) == model.param_count
    assert tensors["embed"] == (model.vocab, model.d_model)
    params = model.params()
    assert list(params) == list(tensors)
    for name, array in params.items():
        assert array.shape == tensors[name]
        assert array.dtype == np.float32


def test_seed_is_deterministic():
    a, b, c = nl.Model(seed=5), nl.Model(seed=5), nl.Model(seed=6)
    pa, pb, pc = a.params(), b.params(), c.params()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert any(not np.array_equal(pa[k], pc[k]) for k in pa)


# ---------------------------------------------------------------- parameters


def test_params_round_trip(model, rng):
    tokens = rng_tokens(model, rng)
    before = model.loss(tokens)
    original = model.params()
    model.set_params(model.params())
    assert model.loss(tokens) == before  # bit-identical
    # params() returns copies: writing to them changes nothing.
    model.params()["embed"][:] = 0
    assert model.loss(tokens) == before
    # A perturbed tensor (float64 input, converted) changes the loss.
    for name in model.tensors:
        p = original[name].astype(np.float64)
        model.set_params({name: p + 0.5 * rng.standard_normal(p.shape)})
        assert model.loss(tokens) != before, name
        # Setting the original back restores it exactly.
        model.set_params({name: original[name]})
        assert model.loss(tokens) == before


def test_set_params_bad_input(model):
    name, shape = next(iter(model.tensors.items()))
    before = model.params()
    with pytest.raises(ValueError, match="unknown tensor"):
        model.set_params({"no.such.tensor": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        model.set_params({name: np.zeros(shape[:-1] + (shape[-1] + 1,))})
    with pytest.raises(ValueError, match="shape"):
        model.set_params({name: np.zeros(math.prod(shape))})
    # A failed call changes nothing, even for the valid entries before the bad one.
    with pytest.raises(ValueError):
        model.set_params({name: np.ones(shape), "no.such.tensor": np.zeros(3)})
    after = model.params()
    assert all(np.array_equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- checkpoints


def test_save_load_round_trip(model, rng, tmp_path):
    model.set_params(perturbed(model, rng))
    tokens = rng_tokens(model, rng)
    path = tmp_path / "m.safetensors"
    model.save(str(path))
    assert not (tmp_path / "m.safetensors.tmp").exists()
    loaded = nl.Model.load(path)  # a pathlib.Path works too
    assert loaded.loss(tokens) == model.loss(tokens)
    ours, theirs = model.params(), loaded.params()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)

    from safetensors.numpy import load_file

    st = load_file(str(path))
    assert set(st) == set(ours)
    for k in ours:
        assert st[k].dtype == np.float32
        assert np.array_equal(st[k], ours[k])

    # float64 round trip, and dtype must match the file's.
    m64 = nl.Model(seed=3, dtype="float64")
    m64.set_params(perturbed(m64, rng))
    p64 = tmp_path / "m64.safetensors"
    m64.save(p64)
    again = nl.Model.load(p64, dtype="float64")
    assert again.loss(tokens) == m64.loss(tokens)
    assert load_file(str(p64))["embed"].dtype == np.float64
    with pytest.raises(ValueError, match="dtype"):
        nl.Model.load(p64)  # float32 requested


def test_load_bad_files(model, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a checkpoint at all, not even close")
    with pytest.raises(ValueError):
        nl.Model.load(garbage)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        nl.Model.load(short)
    with pytest.raises(OSError):
        nl.Model.load(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="dtype"):
        nl.Model.load(garbage, dtype="float16")

    # The same tensors under another spec's hash: refused, naming the spec.
    good = tmp_path / "good.safetensors"
    model.save(good)
    raw = bytearray(good.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + n].decode()
    other = "0" * 64 if model.spec_sha256 != "0" * 64 else "1" * 64
    assert model.spec_sha256 in header
    raw[8 : 8 + n] = header.replace(model.spec_sha256, other).encode()
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="another spec"):
        nl.Model.load(forged)


def test_load_other_spec_checkpoint():
    path = os.environ.get("NL_OTHER_CHECKPOINT")
    if not path:
        pytest.skip("NL_OTHER_CHECKPOINT (a checkpoint of another spec) is not set")
    with pytest.raises(ValueError, match="spec"):
        nl.Model.load(path)


# ---------------------------------------------------------------- loss and gradients


def test_batch_loss_is_mean_of_single_losses(model, rng):
    model.set_params(perturbed(model, rng))
    batch = rng_tokens(model, rng, rows=4)
    singles = np.array([model.loss(row) for row in batch])
    losses = model.loss(batch)
    assert isinstance(losses, np.ndarray) and losses.shape == (4,)
    assert np.array_equal(losses, singles)
    assert isinstance(model.loss(list(batch[0])), float)  # a list works

    mean, grads = model.loss_and_grad(batch)
    assert mean == pytest.approx(singles.mean(), rel=1e-6)
    # The mean gradient is the mean of the single gradients.
    per_row = [model.loss_and_grad(row)[1] for row in batch]
    for k, g in grads.items():
        assert g.dtype == np.float32 and g.shape == model.tensors[k]
        expected = np.mean([p[k].astype(np.float64) for p in per_row], axis=0)
        np.testing.assert_allclose(g, expected, rtol=1e-5, atol=1e-7)
    # loss_and_grad zeroes the gradients first: a second call gives the same.
    again = model.loss_and_grad(batch)[1]
    assert all(np.array_equal(again[k], grads[k]) for k in grads)
    # Its loss is the loss of `loss`.
    assert model.loss_and_grad(batch[0])[0] == pytest.approx(singles[0], rel=1e-6)


def test_gradients_match_finite_differences(model64, rng):
    """The analytic gradient against a central difference computed here in float64.

    The 4th-order stencil (f(x-2h) - 8 f(x-h) + 8 f(x+h) - f(x+2h)) / 12h
    with h = 1e-3 has a truncation error of order h^4 f''''' ~ 1e-12 and a
    rounding error of order eps |f| / h ~ 1e-15 * 5 / 1e-3 ~ 1e-12, far
    below the tolerance: relative 1e-6, or absolute 1e-9 for gradients too
    small for a relative error to mean anything. A coordinate near a kink
    (relu, abs) can spoil a difference; it is retaken with smaller steps
    (as the Rust gradient checks do) and the best agreement kept. The steps
    go down to h = 2.4e-7 because a relu MLP of 96 units over 48 positions
    has thousands of pre-activations, and a perturbation moves all of them:
    one of them within 1e-5 of zero is common (seen on the e2e spec, where
    h = 1.6e-5 still crossed a kink). At h = 2.4e-7 the rounding error is
    about 1e-16 * 6 / 2.4e-7 ~ 3e-9 absolute, still under the tolerance for
    the gradients checked here (|g| > 3e-3 or the 1e-9 floor applies).
    """
    m = model64
    tokens = rng_tokens(m, rng)
    loss, grads = m.loss_and_grad(tokens)
    assert m.loss(tokens) == pytest.approx(loss, rel=1e-12)
    params = m.params()
    checked, failures = 0, []
    for name, shape in m.tensors.items():
        size = math.prod(shape)
        flat_idx = list(rng.choice(size, size=min(3, size), replace=False))
        if name == "embed":  # rows of tokens actually used, else the gradient is 0
            flat_idx += [int(t) * m.d_model + int(rng.integers(m.d_model)) for t in tokens[:3]]
        for i in flat_idx:
            idx = np.unravel_index(i, shape)
            base = params[name]

            def f(dx):
                p = base.copy()
                p[idx] += dx
                m.set_params({name: p})
                return m.loss(tokens)

            def d4(h):
                return (8 * (f(h) - f(-h)) - (f(2 * h) - f(-2 * h))) / (12 * h)

            a = float(grads[name][idx])
            best = None
            for h in (1e-3, 2.5e-4, 6.25e-5, 1.5625e-5, 3.90625e-6, 9.765625e-7, 2.44140625e-7):
                n = d4(h)
                if best is None or abs(a - n) < abs(a - best):
                    best = n
                if abs(a - best) <= 1e-6 * max(abs(a), abs(best)) or abs(a - best) <= 1e-9:
                    break
            m.set_params({name: base})
            checked += 1
            if not (abs(a - best) <= 1e-6 * max(abs(a), abs(best)) or abs(a - best) <= 1e-9):
                failures.append((name, idx, a, best))
    assert checked >= len(m.tensors)
    assert not failures, f"gradient mismatches (tensor, index, analytic, numeric): {failures}"


def test_logits_consistent_with_loss(model, rng):
    model.set_params(perturbed(model, rng))
    tokens = rng_tokens(model, rng)
    logits = model.logits(tokens)
    assert logits.shape == (model.seq_len, model.vocab) and logits.dtype == np.float32
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(model.seq_len), tokens[1:]].mean()
    # The model's loss is a float32 mean of seq_len float32 terms: its
    # rounding is a few ulps of the result (ulp(6.0) = 4.8e-7 in float32).
    assert ce == pytest.approx(model.loss(tokens), rel=2e-6)


# ---------------------------------------------------------------- streaming


def bits_of(logits, token):
    z = np.asarray(logits, dtype=np.float64)
    m = z.max()
    return (m + math.log(np.exp(z - m).sum()) - z[token]) / math.log(2)


def test_stream_feed_equals_step_and_surprise(model, rng):
    model.set_params(perturbed(model, rng))
    text = rng.integers(0, model.vocab, size=3 * model.seq_len + 5)
    s = model.stream()
    assert s.position == 0
    with pytest.raises(ValueError, match="no logits"):
        s.surprise(0)
    by_hand = []
    for i in range(len(text) - 1):
        logits = s.step(int(text[i]))
        assert logits.shape == (model.vocab,) and logits.dtype == np.float32
        b = s.surprise(int(text[i + 1]))
        assert b == pytest.approx(bits_of(logits, text[i + 1]), abs=1e-9)
        by_hand.append(b)
    s.reset()
    assert s.position == 0
    fed = s.feed(text)
    assert fed.dtype == np.float64 and fed.shape == (len(text) - 1,)
    assert np.array_equal(fed, np.array(by_hand))
    assert s.position == len(text)  # every token stepped, the last too
    # The state carries: feeding in two parts gives the same surprises,
    # the one between the parts being `surprise` of the first token of the second.
    s.reset()
    k = 7
    first = s.feed(text[:k])
    between = s.surprise(int(text[k]))
    second = s.feed(text[k:])
    assert np.array_equal(np.concatenate([first, [between], second]), fed)
    # A stream keeps its copy of the parameters.
    model.set_params({k: np.zeros(v) for k, v in model.tensors.items()})
    s.reset()
    assert np.array_equal(s.feed(text), fed)


def test_stream_agrees_with_logits(rng):
    """Stepping a sequence from a reset gives the training forward's logits
    (docs/model.md, "Serving"), up to rounding: both start from an empty
    window and a zero memory state. Checked in float64 over the positions
    whose whole prefix fits in the window (where the two must agree)."""
    m = nl.Model(seed=4, dtype="float64")
    m.set_params(perturbed(m, rng))
    tokens = rng_tokens(m, rng)
    logits = m.logits(tokens)
    s = m.stream()
    n = min(m.seq_len, m.window)
    for t in range(n):
        row = s.step(int(tokens[t]))
        np.testing.assert_allclose(row, logits[t], rtol=0, atol=1e-9)
        z = logits[t] - logits[t].max()
        expected = -(z[tokens[t + 1]] - math.log(np.exp(z).sum())) / math.log(2)
        assert s.surprise(int(tokens[t + 1])) == pytest.approx(expected, abs=1e-9)
    if m.levels == 0 and m.seq_len <= m.window:
        assert n == m.seq_len  # the whole sequence was compared


def test_stream_bad_tokens(model):
    s = model.stream()
    s.step(1)
    before = s.surprise(2)
    for bad in (model.vocab, -1, 2**40):
        with pytest.raises(ValueError, match="out of range"):
            s.step(bad)
        with pytest.raises(ValueError, match="out of range"):
            s.surprise(bad)
    with pytest.raises(ValueError, match="out of range"):
        s.feed([1, 2, model.vocab])
    with pytest.raises(ValueError, match="integers"):
        s.feed(np.array([1.0, 2.0]))
    assert s.position == 1 and s.surprise(2) == before  # unchanged


# ---------------------------------------------------------------- bad input


def test_bad_input_raises_value_error(model):
    n = model.seq_len + 1
    good = np.zeros(n, dtype=np.int64)
    with pytest.raises(ValueError, match="out of range"):
        model.loss(np.where(np.arange(n) == 3, model.vocab, 0))
    with pytest.raises(ValueError, match="out of range"):
        model.loss([-1] + [0] * (n - 1))
    with pytest.raises(ValueError, match="length"):
        model.loss(good[:-1])
    with pytest.raises(ValueError, match="length"):
        model.loss_and_grad(np.zeros((2, n + 1), dtype=np.int64))
    with pytest.raises(ValueError, match="length"):
        model.logits([])
    with pytest.raises(ValueError, match="integers"):
        model.loss(good.astype(np.float64))
    with pytest.raises(ValueError, match="1-D"):
        model.logits(np.zeros((2, n), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model.loss(np.zeros((1, 2, n), dtype=np.int64))
    with pytest.raises(ValueError, match="empty"):
        model.loss_and_grad(np.zeros((0, n), dtype=np.int64))
    with pytest.raises(ValueError, match="dtype"):
        nl.Model(dtype="float16")
    with pytest.raises(ValueError, match="dtype"):
        nl.Model(dtype="f4")
    # Other integer dtypes are fine.
    for dt in (np.uint8, np.int32, np.uint64):
        assert model.loss(good.astype(dt)) == model.loss(good)


# ---------------------------------------------------------------- against Rust


def _serve_inputs():
    ckpt, text = os.environ.get("NL_CHECKPOINT"), os.environ.get("NL_SERVE_TEXT")
    if not (ckpt and text):
        pytest.skip("NL_CHECKPOINT and NL_SERVE_TEXT are not set")
    with open(text, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    return nl.Model.load(ckpt), data


def test_stream_matches_rust_serve():
    jsonl = os.environ.get("NL_SERVE_JSONL")
    if not jsonl:
        pytest.skip("NL_SERVE_JSONL is not set")
    model, data = _serve_inputs()
    bits = model.stream().feed(data)
    with open(jsonl) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    lines = [r for r in lines if "i" in r and "bits" in r]
    assert lines and lines[0]["i"] == 1
    assert len(lines) == len(data) - 1
    for r in lines:
        i = r["i"]
        assert r["byte"] == data[i]
        assert abs(bits[i - 1] - r["bits"]) <= 1e-5, f"byte {i}: python {bits[i - 1]}, rust {r['bits']}"


def test_stream_bits_match_rust_eval():
    path = os.environ.get("NL_EVAL_JSON")
    if not path:
        pytest.skip("NL_EVAL_JSON is not set")
    model, data = _serve_inputs()
    with open(path) as f:
        expected = json.load(f)["stream_bits_per_byte"]
    assert model.stream().feed(data).mean() == pytest.approx(expected, abs=1e-6)
