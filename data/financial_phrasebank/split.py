"""Write a seeded, stratified 80/20 train/test split of a PhraseBank file as CSV (text,label).

    python data/financial_phrasebank/split.py                      # 50Agree, seed 0
    python data/financial_phrasebank/split.py Sentences_75Agree.txt --seed 1

Reads ``sentence@label`` lines (latin-1), keeps the first occurrence of a repeated sentence
(so no sentence is in both halves), and writes ``phrasebank<agree>_{train,test}.csv`` next
to this script, the format ``streamlearner bench continual`` reads.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent


def read(path: Path) -> list[tuple[str, str]]:
    rows, seen = [], set()
    with open(path, encoding="latin-1") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line:
                continue
            text, label = line.rsplit("@", 1)
            if text not in seen:
                seen.add(text)
                rows.append((text.strip(), label.strip()))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", default="Sentences_50Agree.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    args = p.parse_args()
    rows = read(HERE / args.source)
    rng = random.Random(args.seed)
    train, test = [], []
    for label in sorted({y for _, y in rows}):
        group = [r for r in rows if r[1] == label]
        rng.shuffle(group)
        n_test = round(len(group) * args.test_fraction)
        test += group[:n_test]
        train += group[n_test:]
    rng.shuffle(train)
    rng.shuffle(test)
    stem = "phrasebank" + args.source.removeprefix("Sentences_").removesuffix(".txt").lower()
    for name, part in (("train", train), ("test", test)):
        with open(HERE / f"{stem}_{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(part)
        print(f"{stem}_{name}.csv: {len(part)} rows")


if __name__ == "__main__":
    main()
