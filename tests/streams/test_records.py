import base64
import hashlib
import pickle
from datetime import datetime, timezone

import orjson
import pytest

from streams.records import (
    SCHEMA_VERSION,
    DeadLetter,
    Event,
    Prediction,
    Reason,
    RejectedEvent,
    dead_letter,
    decode_event,
)

RECEIVED_AT = 1_700_000_000.5
TS_2024 = datetime(2024, 3, 15, 10, 0, tzinfo=timezone.utc).timestamp()


def _json(**fields) -> bytes:
    return orjson.dumps(fields)


def _decode(raw: bytes, task: str = "feedback", **kwargs) -> Event:
    return decode_event(raw, task=task, received_at=RECEIVED_AT, **kwargs)


# --- rejections ---------------------------------------------------------------

REJECTIONS = [
    # (case id, raw, task, kwargs, reason, words the message must contain)
    ("payload_too_large", _json(id="1", text="x" * 200), "feedback", {"max_payload_bytes": 100},
     Reason.payload_too_large, ["100"]),
    ("invalid_utf8", b"\xff\xfe", "feedback", {}, Reason.invalid_utf8, ["UTF-8"]),
    ("invalid_utf8_inside_string", b'{"id": "1", "text": "caf\xe9"}', "feedback", {},
     Reason.invalid_utf8, ["UTF-8"]),
    ("encoded_surrogate", b'{"id": "1", "text": "\xed\xa0\x80"}', "feedback", {},
     Reason.invalid_utf8, ["UTF-8"]),
    ("invalid_json", b'{"id": "1", "text": ', "feedback", {}, Reason.invalid_json, ["JSON"]),
    ("empty_payload", b"", "feedback", {}, Reason.invalid_json, ["JSON"]),
    ("null_record_value", None, "feedback", {}, Reason.invalid_json, ["null"]),
    ("nan", b'{"id": "1", "text": "x", "ts": NaN}', "feedback", {}, Reason.invalid_json, []),
    ("bom", b'\xef\xbb\xbf{"id": "1", "text": "x"}', "feedback", {}, Reason.invalid_json, []),
    ("array", b"[1,2]", "feedback", {}, Reason.not_an_object, ["list"]),
    ("string", b'"str"', "feedback", {}, Reason.not_an_object, ["str"]),
    ("null", b"null", "feedback", {}, Reason.not_an_object, ["null"]),
    ("number", b"3", "feedback", {}, Reason.not_an_object, ["int"]),
    ("missing_id", _json(text="hello"), "feedback", {}, Reason.missing_field, ["'id'"]),
    ("null_id", _json(id=None, text="hello"), "feedback", {}, Reason.missing_field, ["'id'"]),
    ("missing_text", _json(id="1"), "feedback", {}, Reason.missing_field, ["'text'"]),
    ("empty_id", _json(id="  ", text="hello"), "feedback", {}, Reason.empty_field, ["'id'"]),
    ("empty_text", _json(id="1", text=" \n\t"), "feedback", {}, Reason.empty_field, ["'text'"]),
    ("int_id", _json(id=123, text="hello"), "feedback", {}, Reason.wrong_type, ["'id'", "int"]),
    ("int_text", _json(id="1", text=5), "feedback", {}, Reason.wrong_type,
     ["field 'text' must be a string, got int"]),
    ("text_too_long", _json(id="1", text="x" * 11), "feedback", {"max_text_chars": 10},
     Reason.text_too_long, ["'text'", "11", "10"]),
    ("id_too_long", _json(id="i" * 13, text="hi"), "feedback", {"max_id_chars": 12},
     Reason.field_too_long, ["'id'", "13", "12"]),
    ("label_too_long", _json(id="1", text="hi", label="l" * 9), "feedback",
     {"max_label_chars": 8}, Reason.field_too_long, ["'label'", "9", "8"]),
    ("int_label", _json(id="1", text="hi", label=3), "feedback", {}, Reason.wrong_type,
     ["'label'", "int"]),
    ("list_label", _json(id="1", text="hi", label=["x"]), "feedback", {}, Reason.wrong_type,
     ["'label'", "list"]),
    ("blank_label", _json(id="1", text="hi", label="  "), "feedback", {}, Reason.empty_field,
     ["'label'"]),
    ("word_ts", _json(id="1", text="hi", ts="yesterday"), "feedback", {}, Reason.invalid_ts,
     ["'ts'", "yesterday"]),
    ("bad_date_ts", _json(id="1", text="hi", ts="2024-02-30T00:00:00Z"), "feedback", {},
     Reason.invalid_ts, ["'ts'"]),
    ("milliseconds_ts", _json(id="1", text="hi", ts=1_710_496_800_000), "feedback", {},
     Reason.invalid_ts, ["'ts'", "milliseconds"]),
    ("huge_ts", _json(id="1", text="hi", ts=1e300), "feedback", {}, Reason.invalid_ts, ["'ts'"]),
    ("before_year_1_ts", _json(id="1", text="hi", ts=-1e12), "feedback", {}, Reason.invalid_ts,
     ["'ts'"]),
    ("overflowing_number", b'{"id": "1", "text": "hi", "ts": 1e400}', "feedback", {},
     Reason.invalid_json, []),
    ("bool_ts", _json(id="1", text="hi", ts=True), "feedback", {}, Reason.wrong_type,
     ["'ts'", "bool"]),
    ("list_ts", _json(id="1", text="hi", ts=[1]), "feedback", {}, Reason.wrong_type, ["'ts'"]),
    ("str_price_change", _json(id="1", text="hi", price_change="up"), "market", {},
     Reason.wrong_type, ["'price_change'", "number", "str"]),
    ("bool_volume", _json(id="1", text="hi", volume=False), "market", {}, Reason.wrong_type,
     ["'volume'"]),
    ("int_symbol", _json(id="1", text="hi", symbol=7), "market", {}, Reason.wrong_type,
     ["'symbol'", "string"]),
    ("dict_channel", _json(id="1", text="hi", channel={"a": 1}), "feedback", {},
     Reason.wrong_type, ["'channel'", "dict"]),
    ("int_customer_id", _json(id="1", text="hi", customer_id=42), "feedback", {},
     Reason.wrong_type, ["'customer_id'"]),
]


@pytest.mark.parametrize(
    "raw, task, kwargs, reason, words",
    [case[1:] for case in REJECTIONS],
    ids=[case[0] for case in REJECTIONS],
)
def test_decode_event_rejects(raw, task, kwargs, reason, words):
    with pytest.raises(RejectedEvent) as info:
        _decode(raw, task, **kwargs)
    assert info.value.reason is reason
    for word in words:
        assert word in info.value.message
    assert str(info.value).startswith(f"{reason.value}: ")


def test_every_input_reason_has_a_case():
    # unknown_task: a samples-topic record (decode_sample) or a label record of another task.
    # label_not_allowed: admit() against a task's fixed label set (tests/streams/test_tasks.py).
    produced_elsewhere = {Reason.empty_after_cleaning, Reason.internal_error, Reason.unknown_task,
                          Reason.label_not_allowed}
    covered = {case[4] for case in REJECTIONS}
    assert covered | produced_elsewhere == set(Reason)


def test_size_is_checked_before_anything_else():
    with pytest.raises(RejectedEvent) as info:
        _decode(b"\xff" * 11, max_payload_bytes=10)
    assert info.value.reason is Reason.payload_too_large


def test_payload_at_the_limit_is_accepted():
    raw = _json(id="1", text="hi")
    assert _decode(raw, max_payload_bytes=len(raw)).text == "hi"


def test_text_at_the_limit_is_accepted():
    assert _decode(_json(id="1", text="é" * 10), max_text_chars=10).text == "é" * 10


def test_any_configured_task_decodes_without_source_fields():
    event = _decode(_json(id="1", text="hi", symbol="X"), task="weather")
    assert (event.task, dict(event.fields)) == ("weather", {})


@pytest.mark.parametrize("raw", [_json(id="1", text="hi"), b"\xff"], ids=["valid", "invalid"])
def test_no_task_is_a_programming_error(raw):
    with pytest.raises(ValueError, match="task"):
        _decode(raw, task="")


def test_rejected_event_pickles():
    exc = pickle.loads(pickle.dumps(RejectedEvent(Reason.wrong_type, "field 'x'")))
    assert (exc.reason, exc.message) == (Reason.wrong_type, "field 'x'")


# --- valid events -------------------------------------------------------------

TIMESTAMPS = [
    ("iso_z", "2024-03-15T10:00:00Z", TS_2024),
    ("iso_lower_z", "2024-03-15t10:00:00z", TS_2024),
    ("iso_offset", "2024-03-15T12:00:00+02:00", TS_2024),
    ("iso_negative_offset", "2024-03-15T05:00:00-05:00", TS_2024),
    ("iso_naive_is_utc", "2024-03-15T10:00:00", TS_2024),
    ("iso_space_separator", "2024-03-15 10:00:00", TS_2024),
    ("iso_fraction", "2024-03-15T10:00:00.250Z", TS_2024 + 0.25),
    ("iso_date_only", "2024-03-15", TS_2024 - 10 * 3600),
    ("epoch_int", 1_710_496_800, TS_2024),
    ("epoch_float", 1_710_496_800.75, TS_2024 + 0.75),
    ("epoch_zero", 0, 0.0),
    ("epoch_negative", -86400, -86400.0),
    ("year_9999", "9999-12-31T23:59:59Z", 253402300799.0),
    ("year_1", "0001-01-01T00:00:00Z", -62135596800.0),
    ("null", None, RECEIVED_AT),
]


@pytest.mark.parametrize(
    "ts, expected", [c[1:] for c in TIMESTAMPS], ids=[c[0] for c in TIMESTAMPS]
)
def test_decode_event_timestamps(ts, expected):
    event = _decode(_json(id="1", text="hi", ts=ts))
    assert type(event.ts) is float
    assert event.ts == pytest.approx(expected)


def test_missing_ts_is_receive_time():
    assert _decode(_json(id="1", text="hi")).ts == RECEIVED_AT


VALID = [
    (
        "feedback_full",
        "feedback",
        {"id": "f-1", "text": "  App crashes <b>again</b> ", "label": " negative ",
         "channel": "email", "customer_id": "c-9", "ts": 5},
        Event(id="f-1", task="feedback", text="  App crashes <b>again</b> ", ts=5.0,
              label="negative", fields={"channel": "email", "customer_id": "c-9"}),
    ),
    (
        "feedback_minimal_unlabeled",
        "feedback",
        {"id": "f-2", "text": "ok", "label": None, "channel": None},
        Event(id="f-2", task="feedback", text="ok", ts=RECEIVED_AT, label=None, fields={}),
    ),
    (
        "market_full",
        "market",
        {"id": "m-1", "text": "Nokia shares rise 5.2 %", "symbol": "NOK",
         "price_change": 5, "volume": 1_200_000.5, "ts": 7.5, "label": "positive"},
        Event(id="m-1", task="market", text="Nokia shares rise 5.2 %", ts=7.5,
              label="positive", fields={"symbol": "NOK", "price_change": 5.0,
                                        "volume": 1_200_000.5}),
    ),
    (
        "unknown_fields_ignored",
        "market",
        {"id": "m-2", "text": "x", "source": ["rss"], "extra": {"a": 1}, "channel": 3},
        Event(id="m-2", task="market", text="x", ts=RECEIVED_AT, label=None, fields={}),
    ),
    (
        "unicode_text",
        "feedback",
        {"id": "é", "text": "très bien 👍"},
        Event(id="é", task="feedback", text="très bien 👍", ts=RECEIVED_AT, label=None,
              fields={}),
    ),
]


@pytest.mark.parametrize(
    "task, payload, expected", [c[1:] for c in VALID], ids=[c[0] for c in VALID]
)
def test_decode_event_valid(task, payload, expected):
    event = _decode(orjson.dumps(payload), task)
    assert event == expected
    for name in ("price_change", "volume"):  # numbers are normalised to float
        if name in event.fields:
            assert type(event.fields[name]) is float


def test_event_is_frozen():
    event = _decode(_json(id="1", text="hi"))
    with pytest.raises(AttributeError):
        event.text = "other"


# --- output records -----------------------------------------------------------


def test_prediction_serialises_to_plain_json():
    prediction = Prediction(id="a", task="feedback", label="positive", confidence=0.9,
                            model_version=3, ts=12.5)
    assert orjson.loads(prediction.dumps()) == {
        "id": "a", "task": "feedback", "label": "positive", "confidence": 0.9,
        "model_version": 3, "ts": 12.5, "schema_version": SCHEMA_VERSION,
    }
    assert Prediction.loads(prediction.dumps()) == prediction


def test_prediction_label_may_be_null():
    prediction = Prediction(id="a", task="market", label=None, confidence=0.0,
                            model_version=0, ts=1.0)
    assert orjson.loads(prediction.dumps())["label"] is None


@pytest.mark.parametrize(
    "raw, encoding, payload",
    [
        (b'{"id": 1}', "utf-8", '{"id": 1}'),
        ("café".encode(), "utf-8", "café"),
        (b"", "utf-8", ""),
        (None, "utf-8", ""),
        (b"\xff\xfe", "base64", "//4="),
        (bytes(range(256)), "base64", base64.b64encode(bytes(range(256))).decode()),
    ],
    ids=["json", "non_ascii", "empty", "null", "invalid_utf8", "all_bytes"],
)
def test_dead_letter_encoding(raw, encoding, payload):
    letter = dead_letter(raw, topic="feedback-in", partition=2, offset=41,
                         reason=Reason.invalid_utf8, message="bad", ts=3.0)
    assert (letter.payload_encoding, letter.payload) == (encoding, payload)


def test_dead_letter_base64_round_trips_to_the_original_bytes():
    raw = b"\x00\xff{not utf8\xc3"
    letter = dead_letter(raw, topic="t", partition=0, offset=1, reason=Reason.invalid_utf8,
                         message="m", ts=1.0)
    back = DeadLetter.loads(letter.dumps())
    assert back.payload_encoding == "base64"
    assert base64.b64decode(back.payload) == raw


def test_dead_letter_serialises_to_plain_json():
    letter = dead_letter(b'{"text": 5}', topic="market-in", partition=1, offset=99,
                         reason=Reason.wrong_type, message="field 'text' must be a string",
                         ts=2.5)
    assert orjson.loads(letter.dumps()) == {
        "payload": '{"text": 5}', "payload_encoding": "utf-8", "topic": "market-in",
        "partition": 1, "offset": 99, "reason": "wrong_type",
        "message": "field 'text' must be a string", "ts": 2.5,
        "payload_truncated": False, "payload_bytes": 11,
        "payload_sha256": hashlib.sha256(b'{"text": 5}').hexdigest(),
        "schema_version": SCHEMA_VERSION,
    }


@pytest.mark.parametrize("raw", [
    b'{"id": "x", "text": "' + b"a" * 300_000 + b'"}',            # ASCII
    ('{"id": "x", "text": "' + "\u00e9\u4e2d\U0001f600" * 40_000 + '"}').encode(),  # 2-4 bytes/char
    b'"' + b"\x01\x1f\"\\" * 80_000 + b'"',                         # every char JSON-escaped
    bytes(range(256)) * 2000,                                      # not UTF-8: base64
], ids=["ascii", "multibyte", "escaped", "base64"])
def test_dead_letter_never_exceeds_the_bound(raw):
    bound = 64 * 1024
    letter = dead_letter(raw, topic="t", partition=3, offset=12, reason=Reason.payload_too_large,
                         message="m", ts=1.0, max_bytes=bound)
    size = len(letter.dumps())
    assert size <= bound
    assert size > bound * 0.9            # cut close to the bound, not far below it
    assert letter.payload_truncated and letter.payload_bytes == len(raw)
    assert letter.payload_sha256 == hashlib.sha256(raw).hexdigest()
    assert (letter.topic, letter.partition, letter.offset) == ("t", 3, 12)
    back = DeadLetter.loads(letter.dumps())
    if back.payload_encoding == "base64":
        assert raw.startswith(base64.b64decode(back.payload))
    else:
        assert raw.decode().startswith(back.payload)


def test_small_dead_letter_is_not_cut():
    letter = dead_letter(b"x" * 1000, topic="t", partition=0, offset=0,
                         reason=Reason.invalid_json, message="m", ts=1.0, max_bytes=4096)
    assert not letter.payload_truncated and letter.payload == "x" * 1000
