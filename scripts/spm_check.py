"""SentencePiece (`llama`) vocabularies against the ecosystem, driven by scripts/spm-check.sh.

For llama.cpp's test vocabularies (fixtures/llama-vocab/: Llama SPM and Phi-3) and their test strings, every
string must give llama.cpp's expected ids (add_special = false, parse_special = false):

  a. import: a model GGUF carrying the vocabulary -> `pesc-convert import-gguf` -> transformers'
     AutoTokenizer on the imported folder;
  b. export from tokenizer.json alone: the imported folder -> `pesc-convert quantize --to f32` -> llama.cpp's
     tokenizer on that file;
  c. export from tokenizer.model (Llama SPM): a folder with the SentencePiece model only -> ours and
     llama.cpp's convert_hf_to_gguf.py give the same metadata and tensors, and llama.cpp tokenizes ours as
     expected; sentencepiece itself encodes the strings alike.

Run with the llama-cpp venv's Python; transformers and the converter run under .venv's Python.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from llama_vocab import VOCABS, cases, sentencepiece_model

BIN, TMP, CONVERTER, EXTRA = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
ROOT = Path(__file__).resolve().parent.parent
HF_PYTHON = str(ROOT / ".venv" / "bin" / "python")
failed = 0


def report(ok, name, detail):
    global failed
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def run(*cmd, env=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"spm-check: {' '.join(map(str, cmd))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def compare(name, texts, want, got):
    bad = [(t, w, g) for t, w, g in zip(texts, want, got) if w != g]
    detail = f"{len(texts) - len(bad)}/{len(texts)} strings give llama.cpp's ids"
    if bad:
        t, w, g = bad[0]
        detail += f"; first difference {t!r}: expected {w}, got {g}"
    report(not bad, name, detail)


def llama_cpp_ids(path, texts):
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode(), add_bos=False, special=False) for t in texts]


def transformers_ids(folder, texts):
    code = (
        "import json, sys\nfrom transformers import AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "print(json.dumps([tok.encode(t, add_special_tokens=False) for t in json.load(sys.stdin)]))\n"
    )
    r = subprocess.run([HF_PYTHON, "-c", code, str(folder)], input=json.dumps(texts), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"spm-check: transformers on {folder} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout)


def with_vocabulary(base, vocab, out):
    """`base` (a model GGUF without a vocabulary) with the tokenizer.* keys of `vocab`, as `out`."""
    b, v = gguf.GGUFReader(str(base)), gguf.GGUFReader(str(vocab))
    w = gguf.GGUFWriter(str(out), "llama")
    for reader, keep in [(b, lambda k: not k.startswith("tokenizer.")), (v, lambda k: k.startswith("tokenizer."))]:
        for key, f in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or not keep(key):
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(key, f.contents(), vtype, sub_type=sub)
    for t in b.tensors:
        w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fields(reader):
    return {k: (tuple(int(t) for t in f.types), f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


for name in ["llama-spm", "phi-3"]:
    fixture = VOCABS / f"ggml-vocab-{name}.gguf"
    texts, want = cases(name)
    compare(f"{name}: llama.cpp on its own vocabulary (the harness)", texts, want, llama_cpp_ids(fixture, texts))
    reader = gguf.GGUFReader(str(fixture))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    dense = TMP / f"{name}-dense"
    run("python3", ROOT / "scripts" / "make-synthetic.py", dense, "--hidden", 64, "--intermediate", 128, "--layers", 1,
        "--heads", 2, "--vocab", len(tokens), "--dtype", "f32", "--values", "normal")
    run(BIN, "quantize", dense, "--to", "f32", "-o", TMP / f"{name}-base.gguf")
    with_vocabulary(TMP / f"{name}-base.gguf", fixture, TMP / f"{name}.gguf")

    imported = TMP / f"{name}-imported"
    run(BIN, "import-gguf", TMP / f"{name}.gguf", "-o", imported)
    compare(f"{name}: import-gguf -> transformers", texts, want, transformers_ids(imported, texts))

    run(BIN, "quantize", imported, "--to", "f32", "-o", TMP / f"{name}-reexport.gguf")
    compare(f"{name}: tokenizer.json -> quantize -> llama.cpp", texts, want, llama_cpp_ids(TMP / f"{name}-reexport.gguf", texts))

    if name != "llama-spm":
        continue
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    folder = TMP / "spm-folder"
    shutil.copytree(dense, folder)
    (folder / "tokenizer.model").write_bytes(sentencepiece_model(tokens, scores, types))
    code = (
        "import json, sys\nimport sentencepiece as spm\n"
        "sp = spm.SentencePieceProcessor(model_file=sys.argv[1])\n"
        "print(json.dumps([sp.encode(t) for t in json.load(sys.stdin)]))\n"
    )
    r = subprocess.run([HF_PYTHON, "-c", code, str(folder / "tokenizer.model")], input=json.dumps(texts), capture_output=True,
                       text=True, env={"PYTHONPATH": EXTRA, "PATH": "/usr/bin:/bin"})
    if r.returncode != 0:
        sys.exit(f"spm-check: sentencepiece failed:\n{r.stderr[-3000:]}")
    compare(f"{name}: sentencepiece on the tokenizer.model written for the test (the model file is valid)", texts, want,
            json.loads(r.stdout))

    run(BIN, "quantize", folder, "--to", "f32", "-o", TMP / "spm-ours.gguf")
    env = {"PYTHONPATH": f"{CONVERTER / 'gguf-py'}:{EXTRA}", "PATH": "/usr/bin:/bin"}
    run(HF_PYTHON, CONVERTER / "convert_hf_to_gguf.py", folder, "--outtype", "f32", "--outfile", TMP / "spm-converter.gguf", env=env)
    ours, conv = gguf.GGUFReader(str(TMP / "spm-ours.gguf")), gguf.GGUFReader(str(TMP / "spm-converter.gguf"))
    fo, fc = fields(ours), fields(conv)
    diffs = sorted(k for k in set(fo) | set(fc) if fo.get(k) != fc.get(k) and k != "general.name")
    same_tensors = sorted((t.name, t.tensor_type.name, np.asarray(t.data).tobytes()) for t in ours.tensors) == sorted(
        (t.name, t.tensor_type.name, np.asarray(t.data).tobytes()) for t in conv.tensors)
    report(not diffs and list(fo) == list(fc) and same_tensors, f"{name}: tokenizer.model -> quantize equals convert_hf_to_gguf.py",
           f"{len(fo)} keys, differing: {diffs or 'none'} (general.name aside), key order {'same' if list(fo) == list(fc) else 'differs'}, "
           f"tensors {'same' if same_tensors else 'differ'}")
    compare(f"{name}: tokenizer.model -> quantize -> llama.cpp", texts, want, llama_cpp_ids(TMP / "spm-ours.gguf", texts))

print("all passed" if failed == 0 else f"{failed} failed", flush=True)
sys.exit(1 if failed else 0)
