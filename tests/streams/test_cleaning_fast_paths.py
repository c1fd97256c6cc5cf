"""The cleaning fast paths (issue #6) change speed, never results."""

import dataclasses
import random

from streams import cleaning
from streams.cleaning import clean_event, clean_text
from streams.records import Event

SAMPLES = [
    "see https://example.com/x?y=1 now", "WWW.Example.org.", "ftp://host/file", "www.a.b",
    "card 4111 1111 1111 1111 please", "call +44 20 7946 0958", "(555) 123-4567", "555.123.4567",
    "id 12345678901", "Net sales rose 5.2 % to EUR 205.5 mn in 2010 .", "mail jo@example.com",
    "no digits no links", "４１１１１１１１１１１１１１１１", "h t t p : / /", "",
]


def _slow_mask(text: str) -> str:
    """The unconditional version the fast paths must match."""
    if "@" in text:
        text = cleaning._EMAIL.sub(cleaning.EMAIL, text)
    text = cleaning._URL.sub(cleaning.URL, text)
    text = cleaning._CARD.sub(cleaning._mask_card, text)
    return cleaning._PHONE.sub(cleaning._mask_phone, text)


def test_fast_paths_match_unconditional_masking():
    rng = random.Random(0)
    alphabet = "ab w.:/0123456789+-()@ \u00a0ＷＷＷ"
    texts = SAMPLES + ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
                       for _ in range(3000)]
    for text in texts:
        assert cleaning._mask_pii(text) == _slow_mask(text), text


def test_clean_event_keeps_every_field():
    values = {"id": "a", "task": "market", "text": "Up <b>5 %</b>", "ts": 3.0, "label": "positive",
              "fields": {"symbol": "X"}}
    assert {f.name for f in dataclasses.fields(Event)} == set(values)  # a new field? copy it
    event = Event(**values)
    assert clean_event(event) == dataclasses.replace(event, text=clean_text(event.text))
