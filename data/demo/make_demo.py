"""Regenerates the bundled demo stream (deterministic): ``python data/demo/make_demo.py``.

feedback.jsonl: BANKING77 training utterances of the first N_INTENTS intents (in
categories.json order), interleaved at random, with synthetic `channel` and
`customer_id`; 10% carry no label (predicted, not trained on).
market.jsonl: Financial PhraseBank (AllAgree) sentences with their sentiment, 10%
unlabeled. PhraseBank has no ticker symbols, so `symbol` is absent.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
N_INTENTS = 20
PER_INTENT = 75
N_MARKET = 900
UNLABELED = 0.10
SEED = 7


def main() -> None:
    rng = random.Random(SEED)
    intents = json.loads((DATA / "banking77" / "categories.json").read_text())[:N_INTENTS]
    by_intent: dict[str, list[str]] = {i: [] for i in intents}
    with open(DATA / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in by_intent:
                by_intent[row["category"]].append(row["text"])
    rows = []
    for intent, texts in by_intent.items():
        rng.shuffle(texts)
        rows += [(t, intent) for t in texts[:PER_INTENT]]
    rng.shuffle(rows)
    channels = ["chat", "email", "app-review", "phone-transcript"]
    with open(HERE / "feedback.jsonl", "w", encoding="utf-8") as out:
        for i, (text, intent) in enumerate(rows):
            event = {"id": f"fb-{i:05d}", "text": text, "channel": rng.choice(channels),
                     "customer_id": f"c-{rng.randrange(10_000):04d}"}
            if rng.random() >= UNLABELED:
                event["label"] = intent
            out.write(json.dumps(event, ensure_ascii=False) + "\n")

    lines = (DATA / "financial_phrasebank" / "Sentences_AllAgree.txt").read_text(
        encoding="latin-1").splitlines()
    items = [line.rsplit("@", 1) for line in lines if "@" in line]
    rng.shuffle(items)
    with open(HERE / "market.jsonl", "w", encoding="utf-8") as out:
        for i, (text, sentiment) in enumerate(items[:N_MARKET]):
            event = {"id": f"mk-{i:05d}", "text": text.strip()}
            if rng.random() >= UNLABELED:
                event["label"] = sentiment.strip()
            out.write(json.dumps(event, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
