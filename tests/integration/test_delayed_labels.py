"""Issue #13 end to end: a three-task configuration (two topics into one task, plus a third)
on BANKING77 and PhraseBank, events published without labels and their labels later on the
labels topic at random event-time delays -- some before their events, some for unknown ids,
some twice -- with the worker restarted in the middle.

Every matchable label is trained exactly once (journal), each unmatched one dead-lettered
once with its reason and coordinates, the label metrics agree with what was published, and
nothing pending is lost across the restart.
"""

from __future__ import annotations

import collections
import csv
import json
import random

import orjson

from streams.topics import create_topics
from tools.demo import metric_sum, scrape
from tools.dlq import read_topic
from tools.publish import publish

from .conftest import ROOT, WorkerProc, wait_until
from .test_crash import journal

INTENTS = ["card_arrival", "exchange_rate", "lost_or_stolen_card", "age_limit"]
T0 = 1_750_000_000.0
WAIT_S = 120.0          # LABELS_LABEL_WAIT_S: how long an early label waits (event time)
# Three topics are consumed by three agents at their own pace: the watermark allows this much
# event-time skew between them (LABELS_LATENESS_S) before it expires anything.
LATENESS_S = 10_000.0


def _banking(per_intent: int) -> list[tuple[str, str]]:
    rows: dict[str, list[str]] = {i: [] for i in INTENTS}
    with open(ROOT / "data" / "banking77" / "train.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["category"] in rows and len(rows[row["category"]]) < per_intent:
                rows[row["category"]].append(row["text"])
    return [(text, intent) for intent in INTENTS for text in rows[intent]]


def _phrasebank(n: int) -> list[tuple[str, str]]:
    path = ROOT / "data" / "financial_phrasebank" / "phrasebank50agree_train.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        return [(r["text"], r["label"]) for r in csv.DictReader(fh)][:n]


def _stream(rng: random.Random):
    """(events by topic, labels, expectations). Event ts advance 1 s per event."""
    intents = _banking(30)
    rng.shuffle(intents)
    news = _phrasebank(60)
    items = [("tickets", f"t{k}", t, y) for k, (t, y) in enumerate(intents[:60])]
    items += [("chat", f"c{k}", t, y) for k, (t, y) in enumerate(intents[60:])]
    items += [("news", f"n{k}", t, y) for k, (t, y) in enumerate(news)]
    rng.shuffle(items)
    events: dict[str, list[tuple[float, bytes]]] = collections.defaultdict(list)
    labels: list[tuple[float, dict]] = []
    matchable, unmatched, duplicated = set(), set(), 0
    for k, (topic, eid, text, y) in enumerate(items):
        ts = T0 + k
        events[topic].append((ts, orjson.dumps({"id": eid, "text": text, "ts": ts})))
        task = "news" if topic == "news" else "support"
        r = rng.random()
        if r < 0.1:
            delay = -rng.uniform(1, 30)                   # before its event, within the wait
        else:
            delay = rng.expovariate(1 / 40)
        labels.append((ts + delay, {"id": eid, "label": y, "task": task, "ts": ts + delay}))
        matchable.add(eid)
        if rng.random() < 0.08:                           # the same label again, later
            labels.append((ts + delay + 5, {"id": eid, "label": y, "task": task,
                                            "ts": ts + delay + 5}))
            duplicated += 1
    for j in range(12):                                   # ids no event ever had
        ts = T0 + rng.uniform(0, len(items))
        labels.append((ts, {"id": f"ghost{j}", "label": "lost_or_stolen_card",
                            "task": "support", "ts": ts}))
        unmatched.add(f"ghost{j}")
    # The stream goes on past every wait: closing events and one label move the watermark,
    # so every early label that never found its event expires (event time, not wall time).
    end = T0 + len(items) + 2 * WAIT_S + LATENESS_S
    closing = [orjson.dumps({"id": f"end{j}", "text": f"closing news {j}", "ts": end + j})
               for j in range(3)]
    closing_label = orjson.dumps({"id": "end0", "label": "neutral", "task": "news",
                                  "ts": end + 3})
    matchable.add("end0")
    labels.sort(key=lambda x: x[0])
    return events, labels, matchable, unmatched, duplicated, (closing, closing_label)


def test_three_tasks_late_labels_and_a_restart(broker, worker_env, tmp_path):
    rng = random.Random(13)
    uid = worker_env["KAFKA_APP_ID"].split("-")[-1]
    topics = {name: f"{name}-{uid}" for name in ("tickets", "chat", "news")}
    tasks_file = tmp_path / "tasks.toml"
    tasks_file.write_text(
        f'[tasks.support]\ntopics = ["{topics["tickets"]}", "{topics["chat"]}"]\n'
        f'labels = {json.dumps(INTENTS)}\n\n'
        f'[tasks.news]\ntopics = ["{topics["news"]}"]\nlabels = ["positive", "negative", "neutral"]\n')
    create_topics(broker.bootstrap, {t: 1 for t in topics.values()})
    env = dict(worker_env, KAFKA_TASKS=str(tasks_file), LEARNER_MODE="head",
               STREAM_BATCH_SIZE="16", CHECKPOINT_EVERY_UPDATES="5", CHECKPOINT_IDLE_S="1",
               LABELS_LABEL_WAIT_S=str(WAIT_S), LABELS_MAX_AGE_S="100000",
               LABELS_LATENESS_S=str(LATENESS_S), STREAM_DEDUP_TEXT_WINDOW="0",
               DRIFT_ENABLED="false", GUARD_ENABLED="false")
    events, labels, matchable, unmatched, duplicated, (closing, closing_label) = _stream(rng)
    n_events = sum(len(v) for v in events.values())
    labels_topic = env["KAFKA_LABELS_TOPIC"]
    half = len(labels) // 2

    procs = []

    def run(label_slice, event_filter, name):
        proc = WorkerProc(env, tmp_path / f"{name}.log").start(timeout=240)
        procs.append(proc)
        for topic, evs in events.items():
            publish(broker.bootstrap, topics[topic],
                    [v for ts, v in evs if event_filter(ts)], progress=False)
        publish(broker.bootstrap, labels_topic,
                [orjson.dumps(rec) for _, rec in label_slice], progress=False)
        return proc

    def consumed(proc, n_labels):
        s = scrape(proc.metrics_url)
        return metric_sum(s, "streamlearner_stream_events_total", topic=labels_topic) >= n_labels

    split_ts = labels[half][0]
    try:
        _run_both(broker, env, run, consumed, labels, half, split_ts, events, closing,
                  closing_label, topics, labels_topic, n_events, matchable, unmatched, duplicated)
    finally:
        for p in procs:
            p.kill()


def _run_both(broker, env, run, consumed, labels, half, split_ts, events, closing, closing_label,
              topics, labels_topic, n_events, matchable, unmatched, duplicated):
    first = run(labels[:half], lambda ts: ts <= split_ts, "first")
    n_first = sum(1 for evs in events.values() for ts, _ in evs if ts <= split_ts)

    def settled(proc):
        # Every record of phase 1 taken and every batch acknowledged (after its checkpoint):
        # nothing is still joining when the counters are read.
        s = scrape(proc.metrics_url)
        return (metric_sum(s, "streamlearner_stream_predictions_total") >= n_first
                and metric_sum(s, "streamlearner_stream_events_total", topic=labels_topic) >= half
                and metric_sum(s, "streamlearner_stream_pending_ack_events") == 0)
    wait_until(lambda: settled(first), 180, 0.5, "first worker did not take phase 1")
    before = scrape(first.metrics_url)
    assert first.stop() == 0                              # drained: the pending store kept
    second = run(labels[half:], lambda ts: ts > split_ts, "second")
    try:
        def all_in(proc):
            s = scrape(proc.metrics_url)
            return (metric_sum(s, "streamlearner_stream_predictions_total")
                    + metric_sum(before, "streamlearner_stream_predictions_total") >= n_events
                    and metric_sum(s, "streamlearner_stream_events_total", topic=labels_topic)
                    + metric_sum(before, "streamlearner_stream_events_total",
                                 topic=labels_topic) >= len(labels))
        wait_until(lambda: all_in(second), 240, 0.5, "the second worker did not take it all")
        publish(broker.bootstrap, topics["news"], closing, progress=False)
        wait_until(lambda: metric_sum(scrape(second.metrics_url),
                                      "streamlearner_stream_predictions_total",
                                      task="news") > 0, 60, 0.5)
        publish(broker.bootstrap, labels_topic, [closing_label], progress=False)
        wait_until(lambda: len([i for e in journal(env_ck(env)) for i in e["ids"]])
                   >= len(matchable), 240, 0.5, "not every matchable label was trained")
        wait_until(lambda: len(_dead(broker, env)) >= len(unmatched), 120, 0.5,
                   "unmatched labels were not dead-lettered")
        after = scrape(second.metrics_url)
    finally:
        second.stop()

    trained = collections.Counter(i for e in journal(env_ck(env)) for i in e["ids"])
    assert set(trained) == matchable
    assert all(n == 1 for n in trained.values()), [i for i, n in trained.items() if n != 1]
    dead = _dead(broker, env)
    assert sorted(json.loads(d["payload"])["id"] for d in dead) == sorted(unmatched)
    assert {d["reason"] for d in dead} == {"label_unmatched"}
    assert all(d["topic"] == labels_topic and d["offset"] >= 0 for d in dead)

    def total(outcome):
        return sum(metric_sum(s, "streamlearner_labels_outcomes_total", outcome=outcome)
                   for s in (before, after))
    assert total("joined") == len(matchable)
    assert total("duplicate") == duplicated
    assert total("unmatched_label") == len(unmatched)
    by_task = {t: metric_sum(after, "streamlearner_labels_delay_seconds_count", task=t)
               + metric_sum(before, "streamlearner_labels_delay_seconds_count", task=t)
               for t in ("support", "news")}
    assert sum(by_task.values()) == len(matchable) and min(by_task.values()) > 0
    acc = metric_sum(after, "streamlearner_learner_delayed_prequential_accuracy_ratio",
                     task="support")
    assert 0.0 <= acc <= 1.0
    print(f"trained {len(trained)} labels once each, {len(dead)} unmatched dead-lettered, "
          f"{duplicated} duplicates; delayed-prequential accuracy (support) {acc:.2f}")


def env_ck(env):
    from pathlib import Path

    return Path(env["CHECKPOINT_DIR"]) / "journal.jsonl"


def _dead(broker, env) -> list[dict]:
    return [orjson.loads(r.value) for r in read_topic(broker.bootstrap,
                                                      env["KAFKA_DEAD_LETTER_TOPIC"],
                                                      client_kwargs={})]
