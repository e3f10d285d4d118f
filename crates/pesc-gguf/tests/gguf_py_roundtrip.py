#!/usr/bin/env python3
"""Cross-check pesc-gguf's writer against the Python `gguf` package (gguf-py).

For each sample written by `cargo run -p pesc-gguf --example gguf_sample -- DIR`
(a GGUF file plus a JSON manifest of every key and tensor):

1. gguf-py's GGUFReader opens it and every key (order, value type, element
   type, value; floats compared bit for bit), the alignment, the data offset
   and every tensor (name, type, ggml-order dims, byte size, offsets, bytes)
   must match the manifest.
2. gguf-py's GGUFWriter writes the same keys and tensors, and its file must be
   byte-identical to ours.

Usage: gguf_py_roundtrip.py [DIR]. Without DIR the samples are generated into
a temporary folder with cargo. Needs numpy and gguf (pip install gguf).
"""

import importlib.metadata
import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

SAMPLES = ["sample", "align64"]
F32 = GGUFValueType.FLOAT32
F64 = GGUFValueType.FLOAT64


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", x))[0]


def from_bits(bits, vtype):
    if vtype == F32:
        return struct.unpack("<f", struct.pack("<I", bits))[0]
    if vtype == F64:
        return struct.unpack("<d", struct.pack("<Q", bits))[0]
    return bits


def normalise(value, vtype):
    """gguf-py's value in the manifest's form (floats as bit patterns)."""
    if vtype == F32:
        return f32_bits(value)
    if vtype == F64:
        return f64_bits(value)
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return value


def check_read(path, manifest, failures):
    r = GGUFReader(path)
    where = path.name

    def expect(what, got, want):
        if got != want:
            failures.append(f"{where}: {what}: gguf-py read {got!r}, expected {want!r}")

    expect("alignment", r.alignment, manifest["alignment"])
    expect("data offset", r.data_offset, manifest["data_start"])
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    expect("key order", keys, [kv["key"] for kv in manifest["kv"]])
    for kv in manifest["kv"]:
        field = r.fields.get(kv["key"])
        if field is None:
            failures.append(f"{where}: key {kv['key']} missing")
            continue
        vtype = GGUFValueType(kv["type"])
        expect(f"type of {kv['key']}", field.types[0], vtype)
        got = field.contents()
        if vtype == GGUFValueType.ARRAY:
            sub = GGUFValueType(kv["sub_type"])
            if kv["value"]:
                expect(f"element type of {kv['key']}", field.types[-1], sub)
            got = [normalise(x, sub) for x in got]
        else:
            got = normalise(got, vtype)
        expect(f"value of {kv['key']}", got, kv["value"])

    expect("tensor order", [t.name for t in r.tensors], [t["name"] for t in manifest["tensors"]])
    for t, want in zip(r.tensors, manifest["tensors"]):
        name = want["name"]
        expect(f"type of {name}", int(t.tensor_type), want["type"])
        expect(f"dims of {name}", [int(d) for d in t.shape], want["ne"])
        expect(f"n_bytes of {name}", int(t.n_bytes), want["nbytes"])
        expect(f"data offset of {name}", int(t.data_offset), want["data_offset"])
        expect(f"bytes of {name}", t.data.tobytes().hex(), want["hex"])
    return len(manifest["kv"]), len(manifest["tensors"])


def check_write(path, manifest, failures):
    """gguf-py writes the same content; the files must be byte-identical."""
    kvs = manifest["kv"]
    if not kvs or kvs[0]["key"] != "general.architecture":
        failures.append(f"{path.name}: general.architecture must come first to compare with GGUFWriter")
        return
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "py.gguf"
        w = GGUFWriter(out, kvs[0]["value"])
        for kv in kvs[1:]:
            vtype = GGUFValueType(kv["type"])
            if kv["key"] == "general.alignment":
                w.add_custom_alignment(kv["value"])
            elif vtype == GGUFValueType.ARRAY:
                sub = GGUFValueType(kv["sub_type"])
                w.add_key_value(kv["key"], [from_bits(x, sub) for x in kv["value"]], vtype, sub_type=sub)
            else:
                w.add_key_value(kv["key"], from_bits(kv["value"], vtype), vtype)
        for t in manifest["tensors"]:
            qtype = GGMLQuantizationType(t["type"])
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            byte_shape = list(reversed(t["ne"]))
            byte_shape[-1] = byte_shape[-1] // block * type_size
            data = np.frombuffer(bytes.fromhex(t["hex"]), dtype=np.uint8).reshape(byte_shape)
            w.add_tensor(t["name"], data, raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        ours, theirs = path.read_bytes(), out.read_bytes()
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            failures.append(
                f"{path.name}: differs from gguf-py's GGUFWriter output at byte {at} "
                f"(ours {len(ours)} bytes, gguf-py's {len(theirs)})"
            )


def main():
    if len(sys.argv) > 1:
        return check(Path(sys.argv[1]))
    with tempfile.TemporaryDirectory(prefix="pesc-gguf-") as d:
        root = Path(__file__).resolve().parents[3]
        subprocess.run(
            ["cargo", "run", "-q", "-p", "pesc-gguf", "--example", "gguf_sample", "--", d],
            cwd=root,
            check=True,
        )
        return check(Path(d))


def check(folder):
    failures = []
    n_kv = n_t = 0
    for name in SAMPLES:
        manifest = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        path = folder / manifest["file"]
        k, t = check_read(path, manifest, failures)
        check_write(path, manifest, failures)
        n_kv += k
        n_t += t
    for f in failures:
        print("FAIL", f)
    passed = 2 * len(SAMPLES) if not failures else 0
    print(
        f"gguf-py {importlib.metadata.version('gguf')} cross-check: {len(SAMPLES)} files, "
        f"{n_kv} keys, {n_t} tensors read back and rewritten byte-identically"
        if not failures
        else f"gguf-py cross-check: {len(failures)} mismatches"
    )
    print(f"{passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONIOENCODING", "utf-8")
    sys.exit(main())
