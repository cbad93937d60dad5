"""The demo's data: short English reviews, positive (1) or negative (0), made from templates by this project.

The committed file `sentiment.tsv` (split, label, text) is what `generate()` returns; a test keeps them equal.
The test split uses sentiment words and phrases that never occur in training, so a rise in test accuracy
comes from what the pretrained model already knows about words, not from memorised sentences.

    python -m surgery.demo.dataset    # rewrite sentiment.tsv
"""
from __future__ import annotations

import random
from pathlib import Path

DATA_FILE = Path(__file__).with_name("sentiment.tsv")

SUBJECTS = ["movie", "film", "book", "novel", "pizza", "pasta", "hotel room", "concert", "phone", "laptop",
            "service", "coffee", "restaurant", "video game", "show", "album", "car", "dinner", "staff",
            "museum tour", "flight", "headphones", "camera", "play"]
POSITIVE = ["wonderful", "excellent", "fantastic", "delightful", "superb", "brilliant", "lovely", "great",
            "amazing", "enjoyable", "charming", "impressive", "outstanding", "pleasant", "terrific", "marvelous",
            "fabulous", "perfect"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "disappointing", "boring", "mediocre", "poor", "bad",
            "annoying", "unpleasant", "dull", "lousy", "miserable", "pathetic", "useless", "disgusting", "broken"]
TEMPLATES = ["The {s} was {a}.", "I thought the {s} was {a}.", "Honestly, the {s} is {a}.", "What a {a} {s}!",
             "Our {s} turned out {a}.", "The {s} felt {a} from start to finish.", "Everyone agreed the {s} was {a}.",
             "I would call the {s} {a}.", "This {s} is really {a}.", "The {s} was truly {a} tonight."]
PHRASES = {
    1: ["I loved the {s}.", "I would happily recommend the {s}.", "The {s} exceeded my expectations.",
        "I can't wait to try the {s} again.", "The {s} made my day.", "Five stars for the {s}.",
        "The {s} was worth every penny.", "I enjoyed every minute of the {s}."],
    0: ["I hated the {s}.", "I want my money back for the {s}.", "The {s} was a waste of time.",
        "Never again will I try the {s}.", "The {s} ruined my evening.", "One star for the {s}, at most.",
        "The {s} was not worth the price.", "I regret paying for the {s}."],
}
PER_CLASS = {"train": 240, "test": 80}


def _held_out(items: list[str]) -> tuple[list[str], list[str]]:
    """(train, test): every third item is kept for testing."""
    return [x for i, x in enumerate(items) if i % 3 != 2], [x for i, x in enumerate(items) if i % 3 == 2]


def generate(seed: int = 0) -> list[tuple[str, int, str]]:
    """[(split, label, text)]: PER_CLASS[split] sentences per label, deterministic for a seed."""
    rng = random.Random(seed)
    rows = []
    for label, adjectives in ((1, POSITIVE), (0, NEGATIVE)):
        adj_split, phrase_split = _held_out(adjectives), _held_out(PHRASES[label])
        for index, split in enumerate(("train", "test")):
            pool = {t.format(s=s, a=a) for t in TEMPLATES for s in SUBJECTS for a in adj_split[index]}
            pool |= {p.format(s=s) for p in phrase_split[index] for s in SUBJECTS}
            for text in rng.sample(sorted(pool), PER_CLASS[split]):
                rows.append((split, label, text[0].upper() + text[1:]))
    rng.shuffle(rows)
    return rows


def load(split: str) -> tuple[list[str], list[int]]:
    """(texts, labels) of one split from the committed file."""
    texts, labels = [], []
    for line in DATA_FILE.read_text(encoding="utf-8").splitlines()[1:]:
        row_split, label, text = line.split("\t")
        if row_split == split:
            texts.append(text)
            labels.append(int(label))
    return texts, labels


def write(path: Path = DATA_FILE) -> None:
    lines = ["split\tlabel\ttext"] + [f"{split}\t{label}\t{text}" for split, label, text in generate()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write()
    print(f"wrote {DATA_FILE}")
