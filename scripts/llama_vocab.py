"""llama.cpp's tokenizer test vocabularies (fixtures/llama-vocab/) for the check scripts: the test strings with
llama.cpp's ids, and a SentencePiece `tokenizer.model` written from a vocabulary (Llama's settings)."""

import struct
from pathlib import Path

VOCABS = Path(__file__).resolve().parent.parent / "fixtures" / "llama-vocab"

def cases(name):
    """llama.cpp's test strings for vocabulary `name` and the ids it gives each."""
    texts = (VOCABS / f"ggml-vocab-{name}.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    if texts and texts[-1] == "":
        texts.pop()
    ids = [[int(t) for t in line.split()] for line in (VOCABS / f"ggml-vocab-{name}.gguf.out").read_text().splitlines()]
    assert len(texts) == len(ids), name
    return texts, ids

def sentencepiece_model(tokens, scores, types):
    """A SentencePiece BPE ModelProto (Llama's settings: byte fallback, identity normalizer, dummy prefix)."""

    def varint(v):
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
        return bytes(out)

    def field(number, body):
        return varint(number << 3 | 2) + varint(len(body)) + body

    model = bytearray()
    for t, s, ty in zip(tokens, scores, types):
        piece = field(1, t.encode()) + varint(2 << 3 | 5) + struct.pack("<f", s) + varint(3 << 3) + varint(int(ty))
        model += field(1, piece)
    trainer = varint(3 << 3) + varint(2) + varint(35 << 3) + varint(1)
    model += field(2, trainer)
    normalizer = field(1, b"identity") + varint(3 << 3) + varint(1) + varint(4 << 3) + varint(0)
    model += field(3, normalizer)
    return bytes(model)
