#!/usr/bin/env python3
"""Generates the sentiment benchmark (train/dev/test JSONL) with a fixed rule.

The rule: a review is one or two sentences built from the templates below.
Exactly one opinion word from POSITIVE or NEGATIVE appears in it, and the
label is that word's list: "positive" or "negative". Everything else
(products, openings, fillers) is neutral. Splits are drawn with one seeded
generator, and no review text appears in two splits.

    python3 benchmarks/sentiment/generate.py   # rewrites the three files

The files are committed; this script documents how they were made and makes
them again byte for byte.
"""
import json
import pathlib
import random

POSITIVE = ["great", "excellent", "wonderful", "fantastic", "lovely", "superb",
            "delightful", "brilliant", "reliable", "comfortable", "perfect", "charming"]
NEGATIVE = ["terrible", "awful", "broken", "disappointing", "useless", "horrible",
            "flimsy", "dreadful", "faulty", "uncomfortable", "poor", "annoying"]
PRODUCTS = ["blender", "backpack", "laptop", "kettle", "novel", "jacket", "phone case",
            "coffee maker", "desk lamp", "pair of headphones", "tent", "toaster",
            "keyboard", "umbrella", "board game", "vacuum cleaner"]
TEMPLATES = [
    "The {product} is {word}.",
    "I bought this {product} last month and it is {word}.",
    "Honestly, a {word} {product}.",
    "My {product} arrived yesterday. It feels {word}.",
    "We used the {product} on our trip; {word} overall.",
    "This {product} turned out to be {word}.",
    "After a week with the {product}, I would call it {word}.",
    "Gift for my sister: the {product}. She says it is {word}.",
]
FILLERS = ["", " Delivery took three days.", " It came in a blue box.",
           " I paid with a card.", " The manual is in English."]

SPLITS = {"train": 40, "dev": 40, "test": 200}


def review(rng: random.Random) -> dict:
    label = rng.choice(["positive", "negative"])
    word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
    text = rng.choice(TEMPLATES).format(product=rng.choice(PRODUCTS), word=word)
    text += rng.choice(FILLERS)
    return {"review": text, "sentiment": label}


def main() -> None:
    rng = random.Random(20261203)
    seen = set()
    here = pathlib.Path(__file__).parent
    for split, size in SPLITS.items():
        rows = []
        while len(rows) < size:
            row = review(rng)
            if row["review"] in seen:
                continue
            seen.add(row["review"])
            rows.append(row)
        with open(here / f"{split}.jsonl", "w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
