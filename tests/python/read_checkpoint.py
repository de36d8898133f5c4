#!/usr/bin/env python3
"""Reads an nl safetensors checkpoint with the `safetensors` and `numpy` packages.

Usage: read_checkpoint.py CHECKPOINT [EXPECTED]

Prints the tensor names and shapes, checks the `__metadata__` written by
`nl_runtime::checkpoint`, that the data section starts 8-byte aligned and
is exactly the tensors back to back in header order, and compares the
values listed in EXPECTED (default: CHECKPOINT with `.safetensors`
replaced by `.expected.txt`, as written by the Rust test
`write_checkpoint_for_python` in tests/all/checkpoint.rs) bit for bit.
Exits non-zero on any mismatch.
"""
import json
import re
import struct
import sys

import numpy as np
from safetensors import safe_open


def fail(msg):
    print(f"read_checkpoint.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) not in (2, 3):
        fail(__doc__)
    path = sys.argv[1]
    expected_path = sys.argv[2] if len(sys.argv) == 3 else re.sub(r"\.safetensors$", "", path) + ".expected.txt"

    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if (8 + n) % 8 != 0:
        fail(f"data section starts at {8 + n}, not 8-byte aligned")
    header = json.loads(raw[8 : 8 + n])
    order = [k for k in header if k != "__metadata__"]

    with safe_open(path, framework="np") as f:
        meta = f.metadata()
        names = list(f.keys())
        if sorted(names) != sorted(order):
            fail(f"safetensors lists {names}, the header {order}")
        end = 0
        for name in order:
            t = f.get_tensor(name)
            info = header[name]
            begin, stop = info["data_offsets"]
            if begin != end:
                fail(f"{name} starts at {begin}, the previous tensor ends at {end}")
            end = stop
            if list(t.shape) != info["shape"]:
                fail(f"{name}: shape {t.shape} vs header {info['shape']}")
            print(f"{name:16} {info['dtype']} {list(t.shape)}")
        if 8 + n + end != len(raw):
            fail(f"tensors end at {end}, the data section is {len(raw) - 8 - n} bytes")

        want = {}
        values = []
        with open(expected_path) as e:
            for line in e:
                parts = line.split()
                if parts[0] in ("model", "spec_sha256"):
                    want[parts[0]] = parts[1]
                elif parts[0] == "tensor":
                    want["tensor"], want["start"] = parts[1], int(parts[2])
                else:
                    values.append((int(parts[0], 16), float(parts[1])))

        for key, value in [("format", "nl"), ("format_version", "2"), ("model", want["model"]),
                           ("spec_sha256", want["spec_sha256"])]:
            if meta.get(key) != value:
                fail(f"metadata {key} = {meta.get(key)!r}, expected {value!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", meta["spec_sha256"]):
            fail("spec_sha256 is not 64 lowercase hex digits")

        t = f.get_tensor(want["tensor"]).reshape(-1)
        got = t[want["start"] : want["start"] + len(values)]
        if got.dtype != np.float32:
            fail(f"{want['tensor']} is {got.dtype}, expected float32")
        got_bits = got.view(np.uint32).tolist()
        want_bits = [b for b, _ in values]
        if got_bits != want_bits:
            fail(f"{want['tensor']}[{want['start']}:]: bits {got_bits} vs expected {want_bits}")
        if not np.allclose(got, [v for _, v in values], rtol=1e-6, atol=0):
            fail("values differ from the printed ones")
        print(f"metadata ok: {meta}")
        print(f"{want['tensor']}[{want['start']}:{want['start'] + len(values)}] = {got.tolist()} (bit-exact)")
    print("read_checkpoint.py: OK")


if __name__ == "__main__":
    main()
