"""Property-based fuzzing of the ingestion boundary: decode → validate → clean.

Whatever bytes a producer sends, the only allowed outcomes are a valid :class:`Event`
or a :class:`RejectedEvent` carrying a :class:`Reason` — never another exception —
and every rejected payload can be dead-lettered and recovered byte for byte.
Example counts are kept small so the module runs in a few seconds in CI; raise them
locally with ``FUZZ_EXAMPLES=20000``.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import unicodedata

import orjson
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from streams.cleaning import clean_event, clean_text
from streams.records import (SOURCE_FIELDS, Event, Reason, RejectedEvent, dead_letter,
                             decode_event)

MAX_TEXT = 200
MAX_PAYLOAD = 4096
# FUZZ_EXAMPLES=20000 for a long local run; CI keeps the default (a few seconds).
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
FAST = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Characters that break naive text handling: NUL and other controls, zero-width and
# bidi controls, BOM, combining marks, compatibility forms, odd whitespace, emoji,
# and the characters the HTML/PII patterns key on.
NASTY_CHARS = [
    "\x00", "\x07", "\x1b", "\x7f", "\x85", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff",
    "\u200e", "\u200f", "\u202a", "\u202b", "\u202e", "\u2066", "\u2069", "\u061c",
    "\u0301", "\u0308", "\u20dd", "\u0345", "\u0f73", "\ufb01", "\uff21", "\u2126", "\u212b",
    "\u00bd", "\u2075", "\u3000", "\u00a0", "\u2028", "\u2029", "\t", "\n", "\r", "\x0b",
    "\U0001f600", "\U0001f1eb\U0001f1f7", "\u05d0", "\u0627", "\ud7ff", "\ue000", "\U0010ffff",
    "<", ">", "&", "&amp;", "&lt;", "&#0;", "&#x200B;", "&#xFF21;", "&#65313;", "&nbsp;",
    "<b>", "</b>", "<script>", "</script>", "<style>", "<!--", "-->", "<!x>", "@", ".", "www.",
    "http://", "+", "-", "(", ")", "0", "1", "4111", "5", "[EMAIL]", "[URL]", " ", "  ",
]
# Surrogates are legal in Python strings but not in UTF-8 or JSON text.
SURROGATES = ["\ud800", "\udfff", "\udc80"]

nasty_text = st.lists(st.one_of(st.sampled_from(NASTY_CHARS), st.text(max_size=8)),
                      max_size=30).map("".join)
# Base letters, Hangul jamo and combining marks with dropped characters between them:
# what Unicode composition does once the dropped ones are gone.
composing_text = st.lists(st.sampled_from([
    "e", "a", "A", "o", "\u1100", "\u1161", "\u11a8", "\u0301", "\u0308", "\u0327", "\u0345",
    "\x00", "\x1f", "\u200b", "\u200d", "\ufeff", "\u202e", "\ud800", " ", "&#x200b;", "&#769;",
]), max_size=12).map("".join)
any_text = st.one_of(st.text(max_size=60), nasty_text, composing_text,
                     st.text(st.characters(codec=None), max_size=40))
text_with_surrogates = st.lists(st.one_of(st.sampled_from(SURROGATES), any_text),
                                max_size=6).map("".join)

FIELD_NAMES = ["id", "text", "ts", "label", "channel", "customer_id", "symbol",
               "price_change", "volume"]
json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True), any_text,
    st.sampled_from(["", " ", "2026-11-30T09:15:00Z", "2026-11-30", "1e400", "NaN",
                     "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "z", "Z"]),
    st.sampled_from([0, -1, 1796029200, 1796029200000, 2**63, -(2**63) - 1, 1e308, -0.0]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), any_text),
                                            inner, max_size=4)),
    max_leaves=12,
)
# Objects that mostly look like events, so validation goes past the first checks.
event_like = st.fixed_dictionaries(
    {},
    optional={name: json_values for name in FIELD_NAMES}
    | {"extra": json_values, "nested": st.dictionaries(any_text, json_values, max_size=3)},
)
near_valid = st.fixed_dictionaries(
    {"id": st.one_of(any_text, json_values), "text": st.one_of(any_text, json_values)},
    optional={"ts": json_scalars, "label": st.one_of(any_text, json_scalars),
              "channel": json_scalars, "customer_id": json_scalars, "symbol": json_scalars,
              "price_change": json_scalars, "volume": json_scalars},
)


def _dumps(obj, ensure_ascii: bool) -> bytes:
    """JSON as a careless producer would write it: NaN/Infinity tokens allowed, and
    lone surrogates either escaped (\\ud800) or raw (invalid UTF-8)."""
    return json.dumps(obj, ensure_ascii=ensure_ascii, allow_nan=True).encode(
        "utf-8", "surrogatepass")


json_payloads = st.builds(_dumps, st.one_of(json_values, event_like, near_valid), st.booleans())


def deep_nesting(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"id": "d", "text": "deep", "extra": ' + b"[" * depth + b"]" * depth + b"}"


raw_payloads = st.one_of(
    st.binary(max_size=300),
    json_payloads,
    # valid JSON, then damaged: truncated or with a byte flipped
    st.builds(lambda b, cut: b[:cut], json_payloads, st.integers(0, 200)),
    st.builds(lambda b, i, x: b[:i] + bytes([x]) + b[i + 1:], json_payloads,
              st.integers(0, 200), st.integers(0, 255)),
    st.builds(deep_nesting, st.integers(1, 3000), st.sampled_from(["list", "object", "field"])),
)


def check_event(event: Event, task: str, received_at: float, max_text: int = MAX_TEXT) -> None:
    """What the rest of the pipeline may assume about an accepted event."""
    assert type(event) is Event and event.task == task
    assert type(event.id) is str and event.id.strip()
    assert type(event.text) is str and event.text.strip() and len(event.text) <= max_text
    assert type(event.ts) is float and math.isfinite(event.ts)
    assert event.label is None or (type(event.label) is str and event.label
                                   and event.label == event.label.strip())
    spec = SOURCE_FIELDS[task]
    assert set(event.fields) <= set(spec)
    for name, value in event.fields.items():
        if spec[name] is str:
            assert type(value) is str
        else:
            assert type(value) is float and math.isfinite(value)
    # Ids and texts become Kafka keys and JSON output: they must encode.
    event.id.encode("utf-8")
    event.text.encode("utf-8")
    orjson.dumps({"id": event.id, "label": event.label, "fields": dict(event.fields)})


def check_rejected(exc: RejectedEvent) -> None:
    assert isinstance(exc.reason, Reason) and exc.reason is not Reason.internal_error
    assert type(exc.message) is str and exc.message
    str(exc)


def check_dead_letter_roundtrip(raw: bytes, reason: Reason, message: str) -> None:
    """A dead letter is valid JSON and gives back the original bytes (re-drive needs it)."""
    record = dead_letter(raw, topic="t", partition=0, offset=1, reason=reason, message=message,
                         ts=0.0)
    data = orjson.loads(record.dumps(serializer="json"))
    payload = data["payload"]
    back = (base64.b64decode(payload, validate=True) if data["payload_encoding"] == "base64"
            else payload.encode("utf-8"))
    assert back == raw and data["reason"] == reason.value


def ingest(raw: bytes, task: str) -> Event | RejectedEvent:
    """decode + clean as the pipeline does; returns the outcome instead of raising it."""
    received_at = 1_796_029_200.0
    try:
        event = decode_event(raw, task=task, received_at=received_at,
                             max_text_chars=MAX_TEXT, max_payload_bytes=MAX_PAYLOAD)
    except RejectedEvent as exc:
        check_rejected(exc)
        check_dead_letter_roundtrip(raw, exc.reason, exc.message)
        return exc
    check_event(event, task, received_at)
    try:
        cleaned = clean_event(event)
    except RejectedEvent as exc:
        check_rejected(exc)
        assert exc.reason is Reason.empty_after_cleaning
        assert clean_text(event.text) == ""
        return exc
    check_event(cleaned, task, received_at, max_text=max(MAX_TEXT, len(cleaned.text)))
    assert (cleaned.id, cleaned.ts, cleaned.label, cleaned.fields) == \
        (event.id, event.ts, event.label, event.fields)
    return cleaned


TASKS = st.sampled_from(sorted(SOURCE_FIELDS))


@FAST
@given(raw_payloads, TASKS)
@example(b"", "feedback")
@example(b"\xff\xfe\x00", "feedback")
@example(b'{"id": "a", "text": "\\ud800"}', "feedback")       # escaped lone surrogate
@example(b'{"id": "a", "text": "x", "ts": 1e400}', "market")   # overflows a double
@example(b'{"id": "a", "text": "x", "ts": NaN}', "market")
@example(b'{"id": "a", "text": "x", "price_change": 123456789012345678901234567890}',
         "market")
@example(b'{"id": "a", "text": "x", "ts": "0001-01-01T00:00:00+14:00"}', "feedback")
@example(b'{"id": "a", "text": "x", "ts": "+10000-01-01"}', "feedback")
@example(b'{"id": "a", "text": "\\u0000\\u200b"}', "feedback")
@example(b'{"id": "a", "text": "ok", "id": 5}', "feedback")     # duplicate key: last wins
@example(b'\xef\xbb\xbf{"id": "bom", "text": "x"}', "feedback")
def test_any_payload_is_an_event_or_a_reason(raw, task):
    ingest(raw, task)


@FAST
@given(near_valid, TASKS, st.booleans())
def test_near_valid_events_are_an_event_or_a_reason(obj, task, ensure_ascii):
    ingest(_dumps(obj, ensure_ascii), task)


@FAST
@given(any_text, any_text, TASKS)
def test_well_formed_events_with_nasty_text_are_accepted_or_empty(event_id, text, task):
    """Right types everywhere: only the text's content can reject it."""
    assume(event_id.strip())
    assume(not any(0xD800 <= ord(ch) <= 0xDFFF for ch in event_id + text))  # not JSON
    outcome = ingest(orjson.dumps({"id": event_id, "text": text}), task)
    if isinstance(outcome, RejectedEvent):
        assert outcome.reason in (Reason.empty_field, Reason.text_too_long,
                                  Reason.empty_after_cleaning), outcome


@FAST
@given(st.one_of(any_text, text_with_surrogates))
def test_clean_text_output_is_tidy(text):
    out = clean_text(text)
    assert type(out) is str
    assert out == out.strip()
    assert "  " not in out
    assert all(ch == " " or not ch.isspace() for ch in out)
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in out)
    out.encode("utf-8")  # surrogates never survive: the output can go to Kafka as is


# Markup syntax left in a cleaned text: an escaped tag decoded into a literal one
# ("&lt;b&gt;" -> "<b>"), an escaped entity ("&amp;lt;" -> "&lt;"), or the remains of
# nested markup ("<!--<!---->-->" -> "<!-- -->"). One level of escaping is decoded by
# design, so a second pass may strip these; everything else must be a fixpoint.
_MARKUP_LEFT = re.compile(r"<[A-Za-z/!]|&(?:#|[A-Za-z]+;?)")


@FAST
@given(st.one_of(any_text, text_with_surrogates))
@example("e\x00\u0301")        # a dropped character between a letter and its accent
@example("e&#x200b;\u0301")     # ... an escaped one
@example("\u1100\u200b\u1161")  # ... Hangul jamo that compose once it is gone
def test_clean_text_is_idempotent(text):
    once = clean_text(text)
    if _MARKUP_LEFT.search(once):
        return
    assert clean_text(once) == once


@pytest.mark.parametrize("text, once", [
    ("&lt;b&gt;x", "<b>x"), ("&amp;lt;", "&lt;"), ("<!--<!---->-->", "<!-- -->"),
])
def test_clean_text_decodes_one_level_of_escaping(text, once):
    assert clean_text(text) == once


@FAST
@given(st.one_of(any_text, text_with_surrogates))
@example("e\x00\u0301")
@example("\u1100\u200b\u1161")
def test_clean_text_output_is_nfkc(text):
    out = clean_text(text)
    assert unicodedata.normalize("NFKC", out) == out


@FAST
@given(any_text, TASKS)
def test_clean_event_keeps_everything_but_text(text, task):
    event = Event(id="e1", task=task, text=text, ts=1.0, label="x", fields={"symbol": "S"})
    try:
        out = clean_event(event)
    except RejectedEvent as exc:
        assert exc.reason is Reason.empty_after_cleaning and clean_text(text) == ""
        return
    assert out.text == clean_text(text) and out.text
    assert (out.id, out.task, out.ts, out.label, out.fields) == \
        (event.id, event.task, event.ts, event.label, event.fields)
    assert event.text == text  # the input is not mutated


MB = 1 << 20
BIG_TEXTS = {
    "letters": "a" * MB,
    "words": "word " * (MB // 5),
    "digits": "1" * MB,
    "digit_groups": "4111 " * (MB // 5),
    "phone_like": "+1-" * (MB // 3),
    "at_signs": "a@" * (MB // 2),
    "dots_at": "a." * (MB // 2) + "@",
    "www": "www." * (MB // 4),
    "http": "http://" * (MB // 7),
    "open_tags": "<a" * (MB // 2),
    "unclosed_tag": "<a " + "x" * MB,
    "comments": "<!--" * (MB // 4),
    "script_unclosed": "<script>" + "x" * MB,
    "scripts": "<script>" * (MB // 8),
    "closing_script_spaces": "<script></script" + " " * MB,
    "entities": "&amp;" * (MB // 5),
    "bad_entities": "&#" * (MB // 2),
    "zero_width": "\u200b" * MB,
    "combining": "e" + "\u0301" * MB,
    "nul": "\x00" * MB,
    "rtl": "\u202e abc" * (MB // 5),
    "emoji": "\U0001f600" * (MB // 4),
    "surrogates": "\ud800" * MB,
    "fullwidth": "\uff21" * MB,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", sorted(BIG_TEXTS))
def test_clean_text_finishes_on_megabyte_strings(name):
    """No pattern backtracks catastrophically: 1 MB of hostile text is cleaned at all (a
    linear pass takes milliseconds; a quadratic one would run for hours, and the timeout
    fails the test instead of hanging CI). The worker refuses more than
    STREAM_MAX_TEXT_CHARS anyway."""
    out = clean_text(BIG_TEXTS[name])
    assert type(out) is str


def test_megabyte_payloads_are_rejected_by_size_before_parsing(monkeypatch):
    import streams.records as records

    raw = orjson.dumps({"id": "big", "text": "a" * MB})

    def no_parsing(*_):
        raise AssertionError("the payload was parsed before its size was checked")

    monkeypatch.setattr(records.orjson, "loads", no_parsing)
    with pytest.raises(RejectedEvent) as info:
        decode_event(raw, task="feedback", received_at=0.0)
    assert info.value.reason is Reason.payload_too_large
    monkeypatch.undo()
    # With a payload limit above it, the text limit catches it instead.
    with pytest.raises(RejectedEvent) as info:
        decode_event(raw, task="feedback", received_at=0.0, max_payload_bytes=2 * MB)
    assert info.value.reason is Reason.text_too_long


# --- payloads past the producer's request limit (issue #11) ------------------------------------

PRODUCER_LIMIT = 1_048_576                  # KAFKA_MAX_REQUEST_BYTES default
OUTPUT_BOUND = 256 * 1024                   # STREAM_DEAD_LETTER_MAX_BYTES default
big_payloads = st.builds(
    lambda unit, size, wrap: (b'{"id": "big", "text": "' + unit * (size // max(1, len(unit)))
                              + b'"}') if wrap else (unit * (size // max(1, len(unit)) + 1))[:size],
    st.sampled_from([b"a", "\u00e9".encode(), "\U0001f600".encode(), b"\x00\x1f\"\\",
                     b"\xff\xfe", b"<b>&amp;</b> ", bytes(range(256))]),
    st.integers(min_value=0, max_value=3 * PRODUCER_LIMIT),
    st.booleans())


@settings(max_examples=max(20, FUZZ_EXAMPLES // 10), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(big_payloads)
@example(b"x" * (PRODUCER_LIMIT + 1))
@example(b'{"id": "big", "text": "' + b"\\u0000" * 300_000 + b'"}')
def test_any_payload_size_gives_a_dead_letter_within_the_output_bound(raw):
    try:
        decode_event(raw, task="feedback", received_at=0.0)   # worker defaults
        return                                                # small and valid: no dead letter
    except RejectedEvent as exc:
        reason, message = exc.reason, exc.message
    record = dead_letter(raw, topic="t", partition=0, offset=1, reason=reason, message=message,
                         ts=0.0, max_bytes=OUTPUT_BOUND)
    encoded = record.dumps(serializer="json")
    assert len(encoded) <= OUTPUT_BOUND < PRODUCER_LIMIT
    data = orjson.loads(encoded)
    payload = data["payload"]
    back = (base64.b64decode(payload, validate=True) if data["payload_encoding"] == "base64"
            else payload.encode("utf-8"))
    assert data["payload_bytes"] == len(raw)
    assert data["payload_sha256"] == __import__("hashlib").sha256(raw).hexdigest()
    if data["payload_truncated"]:
        assert raw.startswith(back) and len(back) < len(raw)
    else:
        assert back == raw
