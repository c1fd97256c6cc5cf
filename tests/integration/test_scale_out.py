"""Issue #12: serving replicas and one trainer joined by Kafka, real processes killed for real.

One scenario (process starts are the expensive part on 2 cores): a trainer and three serve
replicas over source topics of 6 partitions, a labeled BANKING77 stream in three parts.

1. Part 1 flows; one replica is SIGKILLed: its partitions move to the other two.
2. Part 2 flows while the trainer is SIGKILLed at 3 random points and restarted each time; a
   probe client asks the surviving replicas ``/predict`` every 50 ms throughout.
3. Part 3 flows. Then: every accepted event has at least one prediction, the trainer's
   journal lists every labeled id exactly once, the probe got 100 % answers, replicas moved
   to the trainer's newest version.
4. A replica started after 50+ versions were published serves the newest one quickly.
5. A published version whose artifact does not match its checksum is refused by the replicas,
   which keep serving the previous one.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
import urllib.request
from pathlib import Path

import orjson

from tools.demo import metric_sum, scrape
from tools.dlq import read_topic
from tools.publish import publish
from streams.topics import create_topics

from .conftest import WorkerProc, wait_until
from tools.broker import free_port
from .test_crash import journal
from .test_worker_e2e import banking_events


class Probe(threading.Thread):
    """POST /predict to the given replicas in turn, every ``every`` seconds."""

    def __init__(self, ports: list[int], every: float = 0.05):
        super().__init__(daemon=True)
        self.ports, self.every = ports, every
        self.answers: list[tuple[int, int]] = []    # (port, model_version)
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self):
        body = json.dumps({"task": "feedback", "text": "I lost my card yesterday"}).encode()
        i = 0
        while not self.stop.is_set():
            port = self.ports[i % len(self.ports)]
            i += 1
            request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body,
                                             headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    self.answers.append((port, json.loads(r.read())["model_version"]))
            except Exception as exc:
                self.failures.append(f"{port}: {type(exc).__name__}: {exc}")
            time.sleep(self.every)


def _served(proc: WorkerProc) -> int:
    return int(metric_sum(scrape(proc.metrics_url), "streamlearner_serve_model_version"))


def _ready(proc: WorkerProc) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/readyz", timeout=5) as r:
            return r.status == 200
    except Exception:   # 503 (not ready yet) raises HTTPError
        return False


def _trained(ck: Path) -> collections.Counter:
    return collections.Counter(i for e in journal(ck / "journal.jsonl") for i in e["ids"])


def test_replicas_and_trainer_survive_kills(broker, worker_env, tmp_path):
    env = dict(worker_env, KAFKA_PARTITIONS="6", STREAM_BATCH_SIZE="16",
               STREAM_DEDUP_TEXT_WINDOW="0", CHECKPOINT_EVERY_UPDATES="3",
               CHECKPOINT_IDLE_S="1", MODELS_PUBLISH_EVERY_S="0.05",
               METRICS_LAG_INTERVAL_S="1")
    # Source topics of 6 partitions (the fixture made 1-partition ones), before any role.
    env["KAFKA_FEEDBACK_TOPIC"] += "-p6"
    env["KAFKA_MARKET_TOPIC"] += "-p6"
    sources = [env["KAFKA_FEEDBACK_TOPIC"], env["KAFKA_MARKET_TOPIC"]]
    create_topics(broker.bootstrap, {t: 6 for t in sources})
    train_ck = tmp_path / "trainer"
    procs: list[WorkerProc] = []

    def start(role: str, name: str, **extra) -> WorkerProc:
        port = free_port()
        e = dict(env, METRICS_PORT=str(port), **extra)
        if role == "train":
            e["CHECKPOINT_DIR"] = str(train_ck)
            e["STREAM_BATCH_SIZE"] = "6"     # more updates, more versions (step 4 wants 50+)
        else:
            e["CHECKPOINT_DIR"] = str(tmp_path / name)
        proc = WorkerProc(e, tmp_path / f"{name}.log", role).start(timeout=240)
        procs.append(proc)
        return proc

    events = banking_events(72, prefix="scale")                   # 360 labeled events
    parts = [events[:120], events[120:240], events[240:]]
    payload = lambda evs: [orjson.dumps(e) for e in evs]           # noqa: E731
    rng = random.Random(12)
    probe = None
    try:
        trainer = start("train", "trainer-0")
        replicas = [start("serve", f"serve-{k}") for k in range(3)]

        # 1. Part 1 flows; a replica dies mid-stream.
        publish(broker.bootstrap, sources[0], payload(parts[0][:60]), progress=False)
        wait_until(lambda: _trained(train_ck).total() >= 30, 240, 1.0, "training did not start")
        publish(broker.bootstrap, sources[0], payload(parts[0][60:]), progress=False)
        replicas[0].kill()
        survivors = replicas[1:]

        # 2. Part 2 flows while the trainer is killed three times.
        probe = Probe([r.port for r in survivors])
        probe.start()
        publish(broker.bootstrap, sources[0], payload(parts[1]), progress=False)
        for k in range(3):
            done = _trained(train_ck).total()
            wait_until(lambda: _trained(train_ck).total() > done + rng.randint(5, 30), 240, 0.2,
                       f"no training progress before kill {k}")
            time.sleep(rng.uniform(0.0, 0.5))
            trainer.kill()
            trainer = start("train", f"trainer-{k + 1}")

        # 3. Part 3, then everything settles.
        publish(broker.bootstrap, sources[0], payload(parts[2]), progress=False)
        ids = {e["id"] for e in events}
        wait_until(lambda: set(_trained(train_ck)) >= ids, 300, 1.0,
                   "not every labeled event was trained")
        newest = int(metric_sum(scrape(trainer.metrics_url), "streamlearner_learner_model_version"))
        wait_until(lambda: all(_served(r) >= newest for r in survivors), 60, 0.5,
                   "replicas did not move to the trainer's newest version")
        probe.stop.set()
        probe.join(timeout=15)

        counts = _trained(train_ck)
        assert set(counts) == ids and set(counts.values()) == {1}, \
            [i for i, n in counts.items() if n != 1][:10]
        predicted = {orjson.loads(r.value)["id"]
                     for r in read_topic(broker.bootstrap, env["KAFKA_PREDICTIONS_TOPIC"],
                                         client_kwargs={})}
        assert predicted >= ids                                    # at least one each
        assert not list(read_topic(broker.bootstrap, env["KAFKA_DEAD_LETTER_TOPIC"],
                                   client_kwargs={}))
        assert not probe.failures, probe.failures[:5]
        assert len(probe.answers) > 50
        versions = [v for _, v in probe.answers]
        assert max(versions) > min(versions)                       # replicas followed along

        # 4. A late replica catches up at once with the newest of many versions. How many
        # versions 360 events made depends on how updates fell between publications (those
        # during a publication in flight are coalesced): top up with more labeled events
        # until 50 are on the topic.
        def versions() -> list[dict]:
            return [orjson.loads(r.value)
                    for r in read_topic(broker.bootstrap, env["KAFKA_MODEL_VERSIONS_TOPIC"],
                                        client_kwargs={})]

        published = versions()
        for extra in range(6):
            if len(published) >= 50:
                break
            more = banking_events(6, offset=6 * extra, prefix=f"scale-more{extra}")   # new ids
            publish(broker.bootstrap, sources[0], payload(more), progress=False)
            ids |= {e["id"] for e in more}
            wait_until(lambda: set(_trained(train_ck)) >= ids, 120, 0.5,
                       "the top-up events were not trained")
            newest = int(metric_sum(scrape(trainer.metrics_url),
                                    "streamlearner_learner_model_version"))
            wait_until(lambda: all(_served(r) >= newest for r in survivors), 60, 0.5,
                       "replicas did not move to the trainer's newest version")
            published = versions()
        assert len(published) >= 50, len(published)
        launched = time.monotonic()
        late = start("serve", "serve-late")
        up = time.monotonic()
        # Ready means caught up: once /readyz answers, it already serves the newest version.
        wait_until(lambda: _ready(late), 120, 0.1, "the late replica never became ready")
        ready = time.monotonic()
        assert _served(late) >= newest, (_served(late), newest)
        print(f"late replica ready with v{_served(late)} {ready - up:.2f} s after /healthz "
              f"({up - launched:.1f} s to start; {len(published)} versions published)")

        # 5. A record whose artifact does not match its checksum is refused everywhere.
        last = published[-1]
        bad = dict(last, sequence=last["sequence"] + 1000, version=last["version"] + 1000,
                   sha256="0" * 64)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        producer.send(env["KAFKA_MODEL_VERSIONS_TOPIC"], key=last["trainer"].encode(),
                      value=json.dumps(bad).encode()).get(timeout=10)
        producer.close()
        for r in survivors + [late]:
            wait_until(lambda: metric_sum(scrape(r.metrics_url),
                                          "streamlearner_serve_refused_artifacts_total",
                                          reason="checksum") >= 1, 30, 0.5,
                       f"replica {r.port} did not refuse the bad artifact")
            assert _served(r) == newest
    finally:
        if probe is not None:
            probe.stop.set()
        for p in procs:
            p.kill()
