#!/usr/bin/env python3
"""Reads nl deployable (quantized) files with `safetensors.numpy.load_file`.

Usage: read_quantized.py DIR

For every `DIR/<name>.expected.txt` (written by the Rust test
`write_quantized_for_python` in tests/all/quant_checkpoint.rs), loads
`DIR/<name>.safetensors` with `safetensors.numpy.load_file`, checks the
`__metadata__` (format, format_version, kind = deploy, quant, spec_sha256,
model), that the data section starts 8-byte aligned and is exactly the
tensors back to back in header order, and that every tensor has the
expected dtype (F32 -> float32, I8 -> int8, U8 -> uint8), shape and bytes.
Exits non-zero on any mismatch.
"""
import glob
import json
import os
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

DTYPES = {"F32": np.float32, "I8": np.int8, "U8": np.uint8}


def fail(msg):
    print(f"read_quantized.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(path, expected_path):
    want, tensors = {}, []
    with open(expected_path) as e:
        for line in e:
            parts = line.split()
            if parts[0] == "tensor":
                name, dtype, shape, hexdata = parts[1], parts[2], parts[3], (parts[4] if len(parts) > 4 else "")
                tensors.append((name, dtype, [int(d) for d in shape.split(",")], bytes.fromhex(hexdata)))
            else:
                want[parts[0]] = parts[1]

    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if (8 + n) % 8 != 0:
        fail(f"{path}: data section starts at {8 + n}, not 8-byte aligned")
    header = json.loads(raw[8 : 8 + n])
    order = [k for k in header if k != "__metadata__"]
    if order != [t[0] for t in tensors]:
        fail(f"{path}: header lists {order}, expected {[t[0] for t in tensors]}")

    with safe_open(path, framework="np") as f:
        meta = f.metadata()
    for key, value in [("format", "nl"), ("format_version", "2"), ("kind", "deploy"), ("quant", want["quant"]),
                       ("model", want["model"]), ("spec_sha256", want["spec_sha256"])]:
        if meta.get(key) != value:
            fail(f"{path}: metadata {key} = {meta.get(key)!r}, expected {value!r}")

    arrays = load_file(path)
    end = 0
    for name, dtype, shape, data in tensors:
        info = header[name]
        begin, stop = info["data_offsets"]
        if begin != end:
            fail(f"{path}: {name} starts at {begin}, the previous tensor ends at {end}")
        end = stop
        a = arrays[name]
        if info["dtype"] != dtype or a.dtype != DTYPES[dtype]:
            fail(f"{path}: {name} is {info['dtype']} / {a.dtype}, expected {dtype}")
        if list(a.shape) != shape:
            fail(f"{path}: {name} has shape {list(a.shape)}, expected {shape}")
        if a.tobytes() != data:
            fail(f"{path}: {name}'s bytes differ")
        if dtype == "I8" and a.size and a.min() < -127:
            fail(f"{path}: {name} has the code {a.min()}")
        if name.endswith(".scale") and not (a > 0).all():
            fail(f"{path}: {name} has a scale <= 0")
    if 8 + n + end != len(raw):
        fail(f"{path}: tensors end at {end}, the data section is {len(raw) - 8 - n} bytes")
    print(f"{os.path.basename(path)}: {meta['quant']}, {len(tensors)} tensors, {end} data bytes ok")


def main():
    if len(sys.argv) != 2:
        fail(__doc__)
    expected = sorted(glob.glob(os.path.join(sys.argv[1], "*.expected.txt")))
    if not expected:
        fail(f"no *.expected.txt in {sys.argv[1]}")
    for e in expected:
        check(e[: -len(".expected.txt")] + ".safetensors", e)
    print("read_quantized.py: OK")


if __name__ == "__main__":
    main()
