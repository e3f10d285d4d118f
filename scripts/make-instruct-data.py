#!/usr/bin/env python3
"""A small mixed instruction set for the worked training validation (docs/training.md).

    python3 scripts/make-instruct-data.py OUT_DIR [--train 600] [--heldout 90] [--seed 0]

Writes OUT_DIR/train.jsonl and OUT_DIR/heldout.jsonl: Alpaca-style records
(`instruction`, `output`) with a `source` of `math`, `code` or `general`, in
equal shares, generated from templates with a seeded generator (standard
library only, so the same arguments give the same bytes). No question of the
held-out file appears in the training file.
"""
import argparse
import json
import random
from pathlib import Path

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("India", "New Delhi"), ("China", "Beijing"),
    ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Australia", "Canberra"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Turkey", "Ankara"), ("Morocco", "Rabat"), ("Cuba", "Havana"),
    ("Hungary", "Budapest"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("early", "late"), ("light", "dark"), ("open", "closed"),
    ("happy", "sad"), ("full", "empty"), ("strong", "weak"), ("old", "young"), ("rich", "poor"), ("hard", "soft"),
    ("high", "low"), ("wet", "dry"), ("loud", "quiet"), ("clean", "dirty"), ("near", "far"), ("thick", "thin"),
]
CODE = [
    ("square", "the square of x", "x * x"), ("double", "twice x", "2 * x"), ("negate", "minus x", "-x"),
    ("is_even", "whether x is even", "x % 2 == 0"), ("last", "the last element of the list x", "x[-1]"),
    ("first", "the first element of the list x", "x[0]"), ("size", "the length of x", "len(x)"),
    ("total", "the sum of the list x", "sum(x)"), ("largest", "the largest element of x", "max(x)"),
    ("smallest", "the smallest element of x", "min(x)"), ("reverse", "x reversed", "x[::-1]"),
    ("upper", "the string x in upper case", "x.upper()"), ("halve", "half of x", "x / 2"),
    ("cube", "the cube of x", "x ** 3"), ("sorted_copy", "a sorted copy of x", "sorted(x)"),
]


def math_record(rng):
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"What is {a} {op} {b}?", f"{a} {op} {b} = {value}."


def code_record(rng):
    name, what, expr = rng.choice(CODE)
    suffix = rng.randint(1, 99)
    fn = f"{name}_{suffix}"
    return f"Write a Python function `{fn}` that returns {what}.", f"def {fn}(x):\n    return {expr}"


def general_record(rng):
    if rng.random() < 0.5:
        country, capital = rng.choice(CAPITALS)
        q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}."])
        return q.format(c=country), f"The capital of {country} is {capital}."
    word, opposite = rng.choice(OPPOSITES)
    if rng.random() < 0.5:
        word, opposite = opposite, word
    return f"What is the opposite of \"{word}\"?", f"The opposite of \"{word}\" is \"{opposite}\"."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=600)
    ap.add_argument("--heldout", type=int, default=90)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    makers = {"math": math_record, "code": code_record, "general": general_record}
    sources = list(makers)

    def draw(n, keep):
        out = []
        while len(out) < n:
            source = sources[len(out) % 3]
            instruction, output = makers[source](rng)
            if keep(instruction):
                out.append({"instruction": instruction, "output": output, "source": source})
        return out

    # Held-out questions are distinct; training questions never repeat a held-out one (they may repeat
    # each other: the general templates hold about 130 questions).
    held = set()

    def new_heldout(instruction):
        fresh = instruction not in held
        held.add(instruction)
        return fresh

    heldout = draw(a.heldout, new_heldout)
    train = draw(a.train, lambda instruction: instruction not in held)
    records = heldout + train
    a.out.mkdir(parents=True, exist_ok=True)
    for name, part in [("heldout.jsonl", records[: a.heldout]), ("train.jsonl", records[a.heldout :])]:
        with open(a.out / name, "w") as f:
            for r in part:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
