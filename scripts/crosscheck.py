#!/usr/bin/env python3
"""Check pesc-convert's outputs against the real Python tools.

    .venv/bin/python scripts/crosscheck.py [--bin PATH] [-k SUBSTRING] [--keep]

A check is a function registered with @check, or with @check(over=ITEMS) to
run once per item (passed as its argument, named fn[item]); checks run in
the order they are defined. It returns a short detail for its PASS line, or
raises (assert, Fail, anything) to fail. The tool's outputs are made lazily
and cached by output(command, fixture, *flags), so checks share them and any
subset runs on its own (-k). The generic checks (sha256sums, manifest,
deterministic) run over RUNS: add a craft/upcycle run there to cover it.
The last line is `N passed, M failed`; the exit status is 1 if any check
failed (or none ran). scripts/crosscheck.sh sets up .venv and builds first.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse
import filecmp
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jsonschema
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "fixtures" / "models"
FIXTURES = ["llama-gqa", "qwen2-bias", "mistral", "llama-sharded", "llama-tied"]
F32_SHARDED = ("--dtype", "f32", "--shard-size", "200KB")
# Tool runs as (command, fixture, *flags): `pesc-convert COMMAND FIXTURE -o OUT FLAGS...`.
CRAFT = ("--experts", "4", "--top-k", "2", "--adapter-dim", "8", "--shard-size", "200KB")
UPCYCLE = ("--experts", "4", "--top-k", "2", "--shard-size", "200KB")
UPCYCLABLE = ["llama-gqa", "mistral", "llama-sharded", "llama-tied"]
RUNS = (
    [("reshard", name, *F32_SHARDED) for name in FIXTURES]
    + [("reshard", "llama-sharded", "--dtype", "keep")]
    + [("craft", name, *CRAFT) for name in FIXTURES]
    + [("upcycle", name, *UPCYCLE) for name in UPCYCLABLE]
)
RESHARDS = [run for run in RUNS if run[0] == "reshard"]
LOGITS_ATOL = 1e-5

BIN: Path = None  # set by main()
TMP: Path = None
CHECKS = []  # (name, zero-argument callable)


class Fail(Exception):
    pass


def check(fn=None, *, over=None):
    """Register a check; with over=ITEMS, one check per item."""

    def register(fn):
        if over is None:
            CHECKS.append((fn.__name__, fn))
        for item in over or ():
            label = item if isinstance(item, str) else " ".join(map(str, item))
            CHECKS.append((f"{fn.__name__}[{label}]", lambda item=item: fn(item)))
        return fn

    return register(fn) if fn else register


def pesc(*args):
    """Run the binary; return its stdout, or raise Fail with its stderr."""
    proc = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise Fail(f"pesc-convert {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


_made = {}


def output(command, fixture, *flags, again=False):
    """Run `pesc-convert COMMAND FIXTURE -o OUT FLAGS...` once (cached) and return OUT.

    again=True is a second, separate run into a folder of another name.
    """
    key = (command, fixture, *flags, again)
    if key not in _made:
        out = TMP / ("again" if again else "out") / re.sub(r"[^\w.]+", "-", " ".join((command, fixture, *flags)))
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            pesc(command, MODELS / fixture, "-o", out, *flags)
            _made[key] = out
        except Fail as e:
            _made[key] = e  # fails every check that needs it, without rerunning
    if isinstance(_made[key], Fail):
        raise _made[key]
    return _made[key]


def read_tensors(folder):
    """Every tensor of every .safetensors file in folder: {name: (file, tensor)}."""
    tensors = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():
                assert name not in tensors, f"{name} is in {tensors[name][0]} and {path.name}"
                tensors[name] = (path.name, f.get_tensor(name))
    return tensors


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- checks -----------------------------------------------------------------


@check(over=FIXTURES)
def logits(fixture):
    """transformers loads the sharded f32 output and computes the reference logits."""
    out = output("reshard", fixture, *F32_SHARDED)
    assert len(list(out.glob("*.safetensors"))) > 1, "expected a sharded output"
    ref = load_file(MODELS / f"{fixture}.reference.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(
        out, dtype=torch.float32, attn_implementation="eager", local_files_only=True, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info: {bad}"
    model.eval()
    with torch.no_grad():
        got = model(input_ids=ref["token_ids"][None], use_cache=False).logits[0]
    diff = (got - ref["logits"]).abs().max().item()
    assert diff <= LOGITS_ATOL, f"max |logits - reference| = {diff:.3g} > {LOGITS_ATOL}"
    return f"{type(model).__name__}, max abs diff {diff:.2g}"


def reference_logits(fixture, folder, expect_class):
    """Load folder with transformers in f32; max |logits - fixture's reference|."""
    ref = load_file(MODELS / f"{fixture}.reference.safetensors")
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", local_files_only=True, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info: {bad}"
    assert type(model).__name__ == expect_class, type(model).__name__
    with torch.no_grad():
        got = model.eval()(input_ids=ref["token_ids"][None], use_cache=False).logits[0]
    return (got - ref["logits"]).abs().max().item()


@check(over=UPCYCLABLE)
def upcycled_mixtral(fixture):
    """transformers loads the upcycled model as Mixtral and its logits equal the dense model's within 1e-4."""
    diff = reference_logits(fixture, output("upcycle", fixture, *UPCYCLE), "MixtralForCausalLM")
    assert diff <= 1e-4, f"max |mixtral - dense| = {diff:.3g} > 1e-4"
    return f"max abs diff {diff:.2g}"


@check(over=RESHARDS)
def safetensors_exact(run):
    """The safetensors package reads every tensor back, bit-identical to the input after the dtype change."""
    fixture, dtype = run[1], run[run.index("--dtype") + 1] if "--dtype" in run else "keep"
    out = output(*run)
    want, got = read_tensors(MODELS / fixture), read_tensors(out)
    assert sorted(got) == sorted(want), f"tensor names differ: {sorted(set(got) ^ set(want))}"
    for name, (_, w) in want.items():
        g = got[name][1]
        if dtype == "f32":
            w = w.to(torch.float32)  # exact from bf16 and f16
        assert g.dtype == w.dtype and g.shape == w.shape, f"{name}: {g.dtype}{list(g.shape)} != {w.dtype}{list(w.shape)}"
        assert torch.equal(g.view(torch.uint8), w.view(torch.uint8)), f"{name}: values differ"
    index = out / "model.safetensors.index.json"
    files = sorted({f for f, _ in got.values()})
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        assert weight_map == {n: f for n, (f, _) in got.items()}, "index weight_map does not match the files"
    else:
        assert files == ["model.safetensors"], files
    return f"{len(got)} tensors in {len(files)} files"


@check(over=RUNS)
def sha256sums(run):
    """`sha256sum -c SHA256SUMS` passes and SHA256SUMS lists every other file."""
    out = output(*run)
    proc = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    bad = [line for line in proc.stdout.splitlines() if not line.endswith(": OK")]
    assert proc.returncode == 0, f"sha256sum -c: {'; '.join(bad)} {proc.stderr.strip()}"
    listed = sorted(line.split(None, 1)[1].lstrip("*") for line in (out / "SHA256SUMS").read_text().splitlines())
    present = sorted(p.name for p in out.iterdir() if p.name != "SHA256SUMS")
    assert listed == present, f"listed {listed}, present {present}"
    return f"{len(listed)} files"


@check(over=RUNS)
def manifest(run):
    """pesc-manifest.json validates against the schema; its sizes and hashes are right."""
    out = output(*run)
    schema = json.loads((ROOT / "schemas" / "manifest.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads((out / "pesc-manifest.json").read_text())
    errors = jsonschema.Draft202012Validator(schema).iter_errors(doc)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    assert not errors, "; ".join(errors[:5])
    files = [f["path"] for f in doc["files"]]
    present = sorted(p.name for p in out.iterdir() if p.name not in ("pesc-manifest.json", "SHA256SUMS"))
    assert files == present, f"files lists {files}, folder has {present}"
    for entry, folder in [(f, out) for f in doc["files"]] + [(f, MODELS / run[1]) for f in doc["inputs"]]:
        path = folder / entry["path"]
        assert entry["bytes"] == path.stat().st_size, f"{path}: size {entry['bytes']} != {path.stat().st_size}"
        assert entry["sha256"] == sha256(path), f"{path}: sha256 differs"
    return f"{len(doc['files'])} files, {len(doc['inputs'])} inputs"


@check(over=RUNS)
def deterministic(run):
    """The same run twice, into folders of other names, gives byte-identical files."""
    a, b = output(*run), output(*run, again=True)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir()), "different file names"
    _, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors, f"differ: {mismatch + errors}"
    return f"{len(names)} files"


# --- driver -----------------------------------------------------------------


def main():
    global BIN, TMP
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", type=Path, default=ROOT / "target" / "release" / "pesc-convert")
    parser.add_argument("-k", dest="only", default="", help="run only checks whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args()
    BIN = args.bin.resolve()
    if not BIN.is_file():
        sys.exit(f"crosscheck: no binary at {BIN} (cargo build --release, or pass --bin)")
    torch.manual_seed(0)

    TMP = Path(tempfile.mkdtemp(prefix="pesc-crosscheck-"))
    passed = failed = 0
    for name, fn in CHECKS:
        if args.only not in name:
            continue
        start = time.monotonic()
        try:
            detail = fn()
        except Exception as e:  # every failure is reported; none stops the run
            failed += 1
            kind = "" if isinstance(e, (Fail, AssertionError)) else f"{type(e).__name__}: "
            print(f"FAIL {name}: {kind}{e}".replace("\n", " | "), flush=True)
        else:
            passed += 1
            print(f"PASS {name} ({detail}; {time.monotonic() - start:.1f}s)", flush=True)
    if args.keep:
        print(f"outputs kept in {TMP}", file=sys.stderr)
    else:
        shutil.rmtree(TMP)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed or not passed else 0)


if __name__ == "__main__":
    main()
