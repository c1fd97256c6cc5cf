"""Dead-letter re-drive (streams/dlq.py) against an in-memory Kafka."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlearner.cli import main
from tools.dlq import (REDRIVE_HEADER, ReplayError, ReplayFilter, decode_dead_letter,
                         marker_topic, parse_since, replay)
from streams.records import Reason, dead_letter

from tests.fake_kafka import FakeKafka

DLQ, FB, MK = "dead-letters", "customer-feedback", "market-events"
SOURCES = [FB, MK]


def put_dead_letter(fake: FakeKafka, raw: bytes, *, reason: str, topic: str = FB,
                    offset: int = 0, partition: int = 0, ts: float = 1000.0) -> None:
    rec = dead_letter(raw, topic=topic, partition=partition, offset=offset,
                      reason=Reason(reason), message="m", ts=ts)
    fake.append(DLQ, rec.dumps(serializer="json"), key=f"{topic}:{partition}:{offset}".encode())


@pytest.fixture
def fake(monkeypatch):
    fake = FakeKafka().install(monkeypatch)
    fake.create(FB)
    fake.create(MK)
    fake.create(DLQ)
    return fake


def run(**kw):
    kw.setdefault("dead_letter_topic", DLQ)
    kw.setdefault("source_topics", SOURCES)
    return replay("broker:9092", **kw)


def test_replays_selected_reasons_byte_for_byte_once(fake):
    long_event = b'{"id": "l1", "text": "' + b"x" * 3000 + b'"}'
    not_utf8 = b"\xff\xfe not utf-8"
    put_dead_letter(fake, long_event, reason="text_too_long", offset=3)
    put_dead_letter(fake, b"[1]", reason="not_an_object", offset=4)
    put_dead_letter(fake, not_utf8, reason="text_too_long", offset=5)  # base64 payload

    first = run(select=ReplayFilter(reasons=frozenset({"text_too_long"})))
    assert (first.read, first.selected, first.republished, first.not_selected) == (3, 2, 2, 1)
    assert first.by_reason == {"text_too_long": 2}
    out = fake.records(FB)
    assert [r.value for r in out] == [long_event, not_utf8]  # the original bytes, in order
    assert [dict(r.headers)[REDRIVE_HEADER] for r in out] == [b"customer-feedback:0:3",
                                                               b"customer-feedback:0:5"]
    markers = fake.records(marker_topic(DLQ))
    assert [m.key for m in markers] == [b"customer-feedback:0:3", b"customer-feedback:0:5"]
    assert orjson.loads(markers[0].value)["republished"] == f"{FB}:0:0"

    again = run(select=ReplayFilter(reasons=frozenset({"text_too_long"})))
    assert (again.read, again.selected, again.republished, again.already_replayed) == (3, 2, 0, 2)
    assert len(fake.records(FB)) == 2  # nothing published twice

    # Another filter later still finds what the first one left.
    other = run()
    assert (other.selected, other.republished, other.already_replayed) == (3, 1, 2)
    assert fake.records(FB)[-1].value == b"[1]"
    assert run().republished == 0


def test_a_source_record_dead_lettered_twice_is_replayed_once(fake):
    # A worker crash between dead-lettering and committing redelivers the record.
    put_dead_letter(fake, b'{"id": "a"}', reason="missing_field", offset=7)
    put_dead_letter(fake, b'{"id": "a"}', reason="missing_field", offset=7)
    report = run()
    assert (report.read, report.selected, report.republished, report.already_replayed) == \
        (2, 2, 1, 1)
    assert len(fake.records(FB)) == 1


def test_dead_letter_of_a_replayed_event_is_new(fake):
    """A replayed event that fails again gets new coordinates: a later run may re-drive it."""
    put_dead_letter(fake, b'{"id": "a"}', reason="missing_field", offset=7)
    assert run().republished == 1
    put_dead_letter(fake, b'{"id": "a"}', reason="missing_field", offset=0)  # its new offset
    assert run().republished == 1
    assert run().republished == 0


def test_since_and_topic_filters(fake):
    put_dead_letter(fake, b"old", reason="invalid_json", ts=100.0, offset=1)
    put_dead_letter(fake, b"new-fb", reason="invalid_json", ts=200.0, offset=2)
    put_dead_letter(fake, b"new-mk", reason="invalid_json", ts=200.0, offset=3, topic=MK)
    report = run(select=ReplayFilter(since=150.0, topic_glob="market-*"))
    assert (report.selected, report.republished, report.not_selected) == (1, 1, 2)
    assert [r.value for r in fake.records(MK)] == [b"new-mk"] and not fake.records(FB)


def test_dry_run_publishes_nothing(fake):
    put_dead_letter(fake, b"x", reason="invalid_json", offset=1)
    seen = []
    report = run(dry_run=True, on_record=seen.append)
    assert (report.selected, report.republished) == (1, 1) and report.dry_run
    assert not fake.records(FB) and marker_topic(DLQ) not in fake.topics
    assert [e.key for e in seen] == [f"{FB}:0:1"]
    assert "would republish 1" in " ".join(report.summary().split())
    assert all(kw["allow_auto_create_topics"] is False for kw in fake.kwargs_of("KafkaConsumer"))
    assert run().republished == 1  # the dry run marked nothing


def test_unreadable_records_and_foreign_topics_are_skipped(fake):
    fake.append(DLQ, b"not json")
    fake.append(DLQ, orjson.dumps({"payload": 1}))
    fake.append(DLQ, None)
    put_dead_letter(fake, b"x", reason="invalid_json", topic="payments", offset=1)
    report = run()
    assert (report.read, report.unreadable, report.unknown_topic, report.republished) == \
        (4, 3, 1, 0)
    assert "payments" not in fake.topics  # never writes to a topic the worker does not read


def test_reads_to_the_high_water_mark_when_list_offsets_is_short(fake):
    """Tansu answers ListOffsets(latest) with the last batch's base offset + 1."""
    for i in range(10):
        put_dead_letter(fake, b"x%d" % i, reason="invalid_json", offset=i)
    fake.end_offsets_short_by = 8
    report = run()
    assert (report.read, report.republished) == (10, 10)


def test_missing_dead_letter_topic_reads_nothing(fake):
    report = run(dead_letter_topic="nothing-here")
    assert report.read == 0 and report.republished == 0


def test_failed_sends_get_no_marker_and_are_retried(fake):
    put_dead_letter(fake, b"ok", reason="invalid_json", offset=1)
    put_dead_letter(fake, b"fails", reason="invalid_json", offset=2)
    fake.fail_sends.add((FB, b"fails"))
    with pytest.raises(ReplayError) as info:
        run()
    assert info.value.report.republished == 1 and info.value.report.failed == 1
    assert [m.key for m in fake.records(marker_topic(DLQ))] == [f"{FB}:0:1".encode()]
    fake.fail_sends.clear()
    retry = run()
    assert (retry.republished, retry.already_replayed) == (1, 1)
    assert [r.value for r in fake.records(FB)] == [b"ok", b"fails"]


def test_marker_tombstone_allows_a_deliberate_second_replay(fake):
    """Deleting a marker (a null-value record with its key) re-arms that dead letter."""
    put_dead_letter(fake, b"x", reason="invalid_json", offset=1)
    assert run().republished == 1
    fake.append(marker_topic(DLQ), None, key=f"{FB}:0:1".encode())
    assert run().republished == 1


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.sampled_from(list(Reason)))
def test_dead_letters_decode_back_to_the_original_bytes(raw, reason):
    rec = dead_letter(raw, topic=FB, partition=2, offset=9, reason=reason, message="m", ts=5.0)
    entry = decode_dead_letter(rec.dumps(serializer="json"))
    assert (entry.payload, entry.topic, entry.partition, entry.offset, entry.reason, entry.ts) \
        == (raw, FB, 2, 9, reason.value, 5.0)


@pytest.mark.parametrize("value", [b"", b"[]", b'{"payload": "x"}', b'{"payload": "@@", '
                                   b'"payload_encoding": "base64", "topic": "t", "partition": 0, '
                                   b'"offset": 0, "reason": "r", "ts": 0}',
                                   b'{"payload": "x", "topic": "t", "partition": "0", '
                                   b'"offset": 0, "reason": "r", "ts": 0}'])
def test_decode_dead_letter_rejects_non_dead_letters(value):
    with pytest.raises(ValueError):
        decode_dead_letter(value)


@pytest.mark.parametrize("text, expected", [
    ("1796029200", 1796029200.0), ("1796029200.5", 1796029200.5),
    ("2026-11-30T09:00:00Z", 1796029200.0), ("2026-11-30T10:00:00+01:00", 1796029200.0),
    ("2026-11-30T09:00:00", 1796029200.0), ("30s", 9970.0), ("30m", 8200.0), ("2h", 2800.0),
    ("1d", 10000.0 - 86400),
])
def test_parse_since(text, expected):
    assert parse_since(text, now=10000.0) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "5w", "-3h"])
def test_parse_since_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_since(text, now=0.0)


def test_cli_replay_with_filters_and_summary(fake, monkeypatch, capsys):
    for name in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME",
                 "KAFKA_SASL_PASSWORD", "KAFKA_SSL_CAFILE", "KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    put_dead_letter(fake, b"a", reason="text_too_long", offset=1)
    put_dead_letter(fake, b"b", reason="invalid_ts", offset=2)
    put_dead_letter(fake, b"c", reason="wrong_type", offset=3)
    argv = ["dlq", "replay", "--reason", "text_too_long,invalid_ts", "--since", "0",
            "--topic-filter", "customer-*", "--bootstrap", "broker:9092"]
    assert main(argv + ["--dry-run", "-v"]) == 0
    out = capsys.readouterr().out
    assert "would republish 2" in " ".join(out.split())
    assert f"{FB}:0:1  text_too_long" in out and not fake.records(FB)
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "read 3" in out and "selected 2" in out and "republished 2" in out
    assert main(argv) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "republished 0" in out and "already replayed 2" in out
    assert all(kw["bootstrap_servers"] == "broker:9092" for _, kw in fake.clients)


def test_cli_bad_since_is_a_usage_error(fake, capsys):
    assert main(["dlq", "replay", "--since", "last week", "--bootstrap", "b:1"]) == 2
    assert "--since" in capsys.readouterr().err


def _truncated(fake, original: bytes, *, offset: int, bound: int = 4096):
    """A payload_too_large dead letter of ``original``, cut to ``bound`` bytes."""
    rec = dead_letter(original, topic=FB, partition=0, offset=offset,
                      reason=Reason.payload_too_large, message="m", ts=1000.0, max_bytes=bound)
    assert rec.payload_truncated
    fake.append(DLQ, rec.dumps(serializer="json"), key=f"{FB}:0:{offset}".encode())


def test_truncated_dead_letter_replays_the_original_read_at_its_coordinates(fake):
    big = b'{"id": "big-1", "text": "' + b"y" * 50_000 + b'"}'
    other = b'{"id": "o", "text": "ok"}'
    fake.append(FB, other)                 # offset 0
    fake.append(FB, big)                   # offset 1: the original
    _truncated(fake, big, offset=1)
    report = run()
    assert (report.republished, report.not_retained, report.mismatch) == (1, 0, 0)
    assert fake.records(FB)[-1].value == big          # the whole original, not the cut prefix
    producer_kw = fake.kwargs_of("KafkaProducer")[-1]
    assert producer_kw["max_request_size"] >= len(big)


def test_truncated_dead_letter_whose_original_is_gone_is_reported_not_published(fake):
    big = b'{"id": "big-2", "text": "' + b"z" * 50_000 + b'"}'
    fake.append(FB, big)                   # offset 0 ...
    fake.append(FB, b'{"id": "later", "text": "x"}')
    fake.log_start[(FB, 0)] = 1            # ... deleted by retention
    _truncated(fake, big, offset=0)
    before = len(fake.records(FB))
    report = run()
    assert (report.selected, report.republished, report.not_retained) == (1, 0, 1)
    assert len(fake.records(FB)) == before and "not retained" in report.summary()
    dry = run(dry_run=True)
    assert (dry.republished, dry.not_retained) == (0, 1)


def test_truncated_dead_letter_with_other_bytes_at_its_coordinates_is_a_mismatch(fake):
    big = b'{"id": "big-3", "text": "' + b"w" * 50_000 + b'"}'
    fake.append(FB, b'{"id": "someone else", "text": "recreated topic"}')   # offset 0
    _truncated(fake, big, offset=0)
    report = run()
    assert (report.republished, report.mismatch) == (0, 1)
    assert len(fake.records(FB)) == 1


def test_decode_reads_the_truncation_fields():
    rec = dead_letter(b"q" * 10_000, topic=FB, partition=2, offset=9,
                      reason=Reason.payload_too_large, message="m", ts=5.0, max_bytes=4096)
    entry = decode_dead_letter(rec.dumps(serializer="json"))
    assert entry.truncated and entry.original_bytes == 10_000 and len(entry.original_sha256) == 64
    legacy = orjson.dumps({"payload": "x", "topic": FB, "partition": 0, "offset": 1,
                           "reason": "invalid_json", "ts": 1.0})
    assert not decode_dead_letter(legacy).truncated     # dead letters from before the bound
    with pytest.raises(ValueError):
        decode_dead_letter(orjson.dumps({"payload": "x", "topic": FB, "partition": 0,
                                         "offset": 1, "reason": "r", "ts": 1.0,
                                         "payload_truncated": True}))
