"""The label record contract: decode_label's table of good and bad records."""

from datetime import datetime, timezone

import orjson
import pytest

from lifecycle.labels import Label, LabelReason, RejectedLabel, decode_label, label_sets

RECEIVED_AT = 1_700_000_000.5
TASKS = {"feedback": None, "market": {"positive", "negative", "neutral"}}


def _json(**fields) -> bytes:
    return orjson.dumps(fields)


REJECTIONS = [
    # (case, raw, kwargs, reason, words the message must contain)
    ("null_value", None, {}, LabelReason.invalid_json, ["null"]),
    ("too_large", _json(id="1", label="x" * 300), {"max_payload_bytes": 100},
     LabelReason.payload_too_large, ["100"]),
    ("invalid_utf8", b'{"id": "1", "label": "caf\xe9"}', {}, LabelReason.invalid_utf8, ["UTF-8"]),
    ("invalid_json", b'{"id": "1", "label": ', {}, LabelReason.invalid_json, ["JSON"]),
    ("empty_payload", b"", {}, LabelReason.invalid_json, ["JSON"]),
    ("array", b"[1]", {}, LabelReason.not_an_object, ["list"]),
    ("string", b'"x"', {}, LabelReason.not_an_object, ["str"]),
    ("missing_id", _json(label="a"), {}, LabelReason.missing_field, ["'id'"]),
    ("null_id", _json(id=None, label="a"), {}, LabelReason.missing_field, ["'id'"]),
    ("missing_label", _json(id="1"), {}, LabelReason.missing_field, ["'label'"]),
    ("empty_id", _json(id=" ", label="a"), {}, LabelReason.empty_field, ["'id'"]),
    ("empty_label", _json(id="1", label=" \t"), {}, LabelReason.empty_field, ["'label'"]),
    ("int_id", _json(id=7, label="a"), {}, LabelReason.wrong_type, ["'id'", "int"]),
    ("list_label", _json(id="1", label=["a"]), {}, LabelReason.wrong_type, ["'label'", "list"]),
    ("bool_task", _json(id="1", label="a", task=True), {}, LabelReason.wrong_type, ["'task'"]),
    ("empty_task", _json(id="1", label="a", task=""), {}, LabelReason.empty_field, ["'task'"]),
    ("id_too_long", _json(id="x" * 13, label="a"), {"max_id_chars": 12},
     LabelReason.field_too_long, ["'id'", "12"]),
    ("label_too_long", _json(id="1", label="y" * 9), {"max_label_chars": 8},
     LabelReason.field_too_long, ["'label'", "8"]),
    ("unknown_task", _json(id="1", label="a", task="tickets"), {"tasks": TASKS},
     LabelReason.unknown_task, ["tickets", "feedback"]),
    ("label_outside_set", _json(id="1", label="up", task="market"), {"tasks": TASKS},
     LabelReason.label_not_allowed, ["'up'", "market"]),
    ("label_in_no_set", _json(id="1", label="up"), {"tasks": {"market": {"down"}}},
     LabelReason.label_not_allowed, ["no task"]),
    ("ts_bool", _json(id="1", label="a", ts=True), {}, LabelReason.wrong_type, ["'ts'"]),
    ("ts_millis", _json(id="1", label="a", ts=1.7e15), {}, LabelReason.invalid_ts, ["milli"]),
    ("ts_garbage", _json(id="1", label="a", ts="yesterday"), {}, LabelReason.invalid_ts, ["ISO"]),
    ("ts_nan", b'{"id": "1", "label": "a", "ts": NaN}', {}, LabelReason.invalid_json, []),
]


@pytest.mark.parametrize("case,raw,kwargs,reason,words", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections(case, raw, kwargs, reason, words):
    with pytest.raises(RejectedLabel) as info:
        decode_label(raw, received_at=RECEIVED_AT, **kwargs)
    assert info.value.reason is reason
    for word in words:
        assert word in info.value.message
    assert str(info.value).startswith(reason.value + ": ")


ACCEPTED = [
    # (case, raw, kwargs, (id, label, task, ts))
    ("minimal", _json(id="fb-1", label="card_arrival"), {},
     ("fb-1", "card_arrival", None, RECEIVED_AT)),
    ("epoch_ts", _json(id="1", label="a", ts=5), {}, ("1", "a", None, 5.0)),
    ("iso_z", _json(id="1", label="a", ts="2024-03-15T10:00:00Z"), {},
     ("1", "a", None, datetime(2024, 3, 15, 10, tzinfo=timezone.utc).timestamp())),
    ("naive_iso_is_utc", _json(id="1", label="a", ts="2024-03-15T10:00:00"), {},
     ("1", "a", None, datetime(2024, 3, 15, 10, tzinfo=timezone.utc).timestamp())),
    ("null_optionals", _json(id="1", label="a", task=None, ts=None), {},
     ("1", "a", None, RECEIVED_AT)),
    ("label_stripped", _json(id="1", label="  positive ", task="market"), {"tasks": TASKS},
     ("1", "positive", "market", RECEIVED_AT)),
    ("open_task", _json(id="1", label="anything", task="feedback"), {"tasks": TASKS},
     ("1", "anything", "feedback", RECEIVED_AT)),
    ("taskless_any_set", _json(id="1", label="anything"), {"tasks": TASKS},
     ("1", "anything", None, RECEIVED_AT)),
    ("extra_fields_ignored", _json(id="1", label="a", agent="bob"), {}, ("1", "a", None, RECEIVED_AT)),
]


@pytest.mark.parametrize("case,raw,kwargs,want", ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted(case, raw, kwargs, want):
    label = decode_label(raw, received_at=RECEIVED_AT, source=("labels", 2, 41), **kwargs)
    assert (label.id, label.label, label.task, label.ts) == want
    assert label.payload == raw.decode() and label.source == ("labels", 2, 41)


def test_label_round_trips_through_a_list():
    label = Label("1", "a", "feedback", 3.0, '{"id": "1"}', ("labels", 0, 9))
    assert Label.from_list(orjson.loads(orjson.dumps(label.to_list()))) == label


@pytest.mark.parametrize("tasks", [{"": None}, {"t": "abc"}, {"t": []}, {"t": ["ok", " "]}])
def test_bad_task_tables(tasks):
    with pytest.raises(ValueError, match="tasks"):
        label_sets(tasks)
