"""Tasks from configuration (KAFKA_TASKS): a table of good and bad configurations, and the
fixed label set enforced on inline labels."""

from __future__ import annotations

import json

import pytest

from streamlearner.settings import Settings, SettingsError
from streams.admit import RawEvent, admit
from streams.config import StreamConfig
from streams.records import Reason
from streams.tasks import TaskSpec, parse_tasks

GOOD_TOML = """
[tasks.tickets]
topics = ["tickets", "chat"]
labels = ["card_arrival", "lost_card"]
batch_size = 64
max_wait_s = 0.5

[tasks.reviews]
topics = ["reviews"]
"""


def test_default_tasks_are_feedback_and_market():
    k = Settings.from_env({}).kafka
    assert k.source_topics() == {"customer-feedback": "feedback", "market-events": "market"}
    assert k.task_names() == ["feedback", "market"]
    assert "labels" in k.all_topics()


def test_a_toml_file_with_two_topics_into_one_task(tmp_path):
    path = tmp_path / "tasks.toml"
    path.write_text(GOOD_TOML)
    k = Settings.from_env({"KAFKA_TASKS": str(path)}).kafka
    assert k.source_topics() == {"tickets": "tickets", "chat": "tickets", "reviews": "reviews"}
    tickets = k.task_spec("tickets")
    assert tickets == TaskSpec("tickets", ("tickets", "chat"),
                               frozenset({"card_arrival", "lost_card"}), 64, 0.5)
    assert k.task_spec("reviews").labels is None
    # The default tasks' topics are not sources any more.
    assert "customer-feedback" not in k.all_topics()


def test_an_empty_value_means_the_default_tasks():
    assert Settings.from_env({"KAFKA_TASKS": " "}).kafka.task_names() == ["feedback", "market"]
    with pytest.raises(ValueError, match="empty"):
        parse_tasks(" ")


def test_inline_tasks():
    specs = parse_tasks(" tickets = tickets , chat ; reviews=reviews ;")
    assert [(t.name, t.topics) for t in specs] == [("tickets", ("tickets", "chat")),
                                                   ("reviews", ("reviews",))]


BAD = [
    ("tickets", "expected name=topic"),
    ("tickets=", "non-empty list of topic names"),
    ("Tickets=t", "lower-case"),
    ("a=t;a=u", "named twice"),
    ("a=t;b=t", "feeds both 'a' and 'b'"),
    ("a=bad topic", "not a valid Kafka topic name"),
    ("a=predictions", "KAFKA_PREDICTIONS_TOPIC: predictions_topic must differ"),
    ("a=labels", "KAFKA_LABELS_TOPIC"),
    ("/nonexistent/tasks.toml", "cannot read"),
]
BAD_TOML = [
    ("[tasks.a]\ntopics = 'x'\n", "tasks.a.topics"),
    ("[tasks.a]\ntopics = ['x']\nlabels = []\n", "tasks.a.labels"),
    ("[tasks.a]\ntopics = ['x']\nlabels = ['', 'b']\n", "tasks.a.labels"),
    ("[tasks.a]\ntopics = ['x']\nbatch_size = 0\n", "tasks.a.batch_size"),
    ("[tasks.a]\ntopics = ['x']\nbatch_size = true\n", "tasks.a.batch_size"),
    ("[tasks.a]\ntopics = ['x']\nmax_wait_s = -1\n", "tasks.a.max_wait_s"),
    ("[tasks.a]\ntopics = ['x']\nlr = 0.1\n", "unknown keys ['lr']"),
    ("[task.a]\ntopics = ['x']\n", "unknown top-level keys"),
    ("tasks = 3\n", "no [tasks.<name>] tables"),
    ("[tasks.a\n", "not valid TOML"),
    ("", "no [tasks.<name>] tables"),
]


@pytest.mark.parametrize("value, message", BAD)
def test_bad_inline_tasks_name_the_setting(value, message):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"KAFKA_TASKS": value})
    assert str(err.value).startswith("KAFKA_")
    assert message in str(err.value)


@pytest.mark.parametrize("text, message", BAD_TOML)
def test_bad_task_files_name_the_setting_and_the_key(tmp_path, text, message):
    path = tmp_path / "tasks.toml"
    path.write_text(text)
    with pytest.raises(SettingsError) as err:
        Settings.from_env({"KAFKA_TASKS": str(path)})
    assert str(err.value).startswith("KAFKA_TASKS: ")
    assert message in str(err.value)


def test_inline_labels_outside_the_fixed_set_are_rejected():
    def raw(offset, label):
        return RawEvent(json.dumps({"id": f"e{offset}", "text": "hi there", "label": label})
                        .encode(), "tickets", 0, offset, 0.0)

    batch = [raw(0, "lost_card"), raw(1, "weather"), raw(2, None)]
    out = admit(batch, task="tickets", limits=StreamConfig(), dedup=None, received_at=0.0,
                labels=frozenset({"lost_card"}))
    assert [r.offset for r, _ in out.accepted] == [0, 2]
    assert [(r.offset, reason) for r, reason, _ in out.rejected] == \
        [(1, Reason.label_not_allowed)]


def test_publish_takes_a_task_name_for_its_first_topic(tmp_path, monkeypatch, capsys):
    import tools.publish
    from streamlearner.cli import main

    sent = {}

    def fake_publish(bootstrap, topic, payloads, **kw):
        sent["topic"] = topic
        return len(list(payloads))

    monkeypatch.setattr(tools.publish, "publish", fake_publish)
    data = tmp_path / "events.jsonl"
    data.write_text('{"id": "1", "text": "hi"}\n')
    monkeypatch.setenv("KAFKA_TASKS", "support=tickets,chat;reviews=reviews")
    assert main(["publish", "support", str(data), "--bootstrap", "127.0.0.1:1"]) == 0
    assert sent["topic"] == "tickets"
    assert main(["publish", "chat", str(data), "--bootstrap", "127.0.0.1:1"]) == 0
    assert sent["topic"] == "chat"                      # a topic stays a topic
    assert "published 1 events to chat" in capsys.readouterr().out
