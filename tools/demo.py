"""``streamlearner demo``: embedded broker + a worker process + the bundled sample stream.

Publishes BANKING77 customer feedback, then Financial PhraseBank market news, with
malformed events and re-published duplicates mixed in; follows the predictions and
dead-letter topics live; ends with a summary that measures prequential accuracy
(prediction made before the model learned the event) early vs late in each stream.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from streamlearner.settings import Settings

DEMO_DIR = Path(__file__).resolve().parent.parent / "data" / "demo"

# (payload, reason the worker must dead-letter it with)
MALFORMED: list[tuple[bytes, str]] = [
    (b"\xff\xfe\x00 not utf-8", "invalid_utf8"),
    (b'{"id": "bad-json", "text": ', "invalid_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (b'{"text": "an event without an id"}', "missing_field"),
    (b'{"id": "   ", "text": "blank id"}', "empty_field"),
    (b'{"id": 42, "text": "numeric id"}', "wrong_type"),
    (b'{"id": "huge", "text": "' + b"a" * 5000 + b'"}', "text_too_long"),
    (b'{"id": "lbl-num", "text": "my card is lost", "label": 3}', "wrong_type"),
    (b'{"id": "only-html", "text": "<p>&nbsp;</p>"}', "empty_after_cleaning"),
    (b'{"id": "bad-ts", "text": "where is my card", "ts": "yesterday"}', "invalid_ts"),
    (b'{"id": "flood", "text": "x", "pad": "' + b"z" * 70_000 + b'"}', "payload_too_large"),
]


def read_stream(path: Path, limit: int | None) -> list[bytes]:
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines[:limit] if limit is not None else lines


def interleave(good: list[bytes], bad: list[bytes], duplicates: int) -> list[bytes]:
    """Spread ``bad`` evenly through ``good`` and re-publish ``duplicates`` earlier events."""
    out = list(good)
    step = max(1, len(out) // (len(bad) + 1))
    for i, payload in enumerate(bad, start=1):
        out.insert(min(len(out), i * step + i - 1), payload)
    for i in range(duplicates):
        out.append(good[(i * 37) % len(good)])
    return out


@dataclass
class Follower:
    """Consumes predictions and dead letters in a thread (kafka-python, manual assignment)."""

    bootstrap: str
    predictions_topic: str
    dead_letter_topic: str
    predictions: dict[str, dict] = field(default_factory=dict)
    dead_letters: list[dict] = field(default_factory=list)
    client_kwargs: dict = field(default_factory=dict, repr=False)  # KafkaConfig.client_kwargs()
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> "Follower":
        self._thread = threading.Thread(target=self._run, name="demo-follower", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest", group_id=None,
                                 client_id="streamlearner-demo-follower", **self.client_kwargs)
        parts = []
        for topic in (self.predictions_topic, self.dead_letter_topic):
            for p in consumer.partitions_for_topic(topic) or {0}:
                parts.append(TopicPartition(topic, p))
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        try:
            while not self._stop.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for rec in records:
                        value = orjson.loads(rec.value)
                        if tp.topic == self.predictions_topic:
                            self.predictions.setdefault(value["id"], value)
                        else:
                            self.dead_letters.append(value)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Parse a /metrics page into {(name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_sum(samples: dict, name: str, **labels) -> float:
    return sum(v for (n, lbl), v in samples.items()
               if n == name and all(dict(lbl).get(k) == val for k, val in labels.items()))


def prequential(labels: dict[str, str], predictions: dict[str, dict], ids: list[str],
                fraction: float = 0.2) -> tuple[float, float, int]:
    """Accuracy of the first and last ``fraction`` of labeled events (stream order)."""
    labeled = [i for i in ids if i in labels and i in predictions]
    k = max(1, int(len(labeled) * fraction))
    def acc(part):
        return sum(predictions[i]["label"] == labels[i] for i in part) / max(1, len(part))
    return acc(labeled[:k]), acc(labeled[-k:]), len(labeled)


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not up after {timeout}s")


def security_env(kafka) -> dict[str, str]:
    """The Kafka security settings as environment variables, for a worker subprocess: a
    password given as a flag reaches it without ever being on its command line."""
    names = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
             "ssl_cafile")
    return {f"KAFKA_{n.upper()}": str(getattr(kafka, n)) for n in names
            if getattr(kafka, n) is not None}


def start_worker(env_overrides: dict[str, str], log_path: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(env_overrides)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "streamlearner.cli", "worker"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)


def stop_worker(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_demo(settings: Settings, *, feedback_limit: int | None = None,
             market_limit: int | None = None, rate: float | None = None,
             workdir: str | None = None, timeout_s: float = 900) -> int:
    from tqdm import tqdm

    from tools.broker import EmbeddedBroker, free_port
    from tools.publish import make_producer, publish
    from streams.topics import create_topics, settings_topics

    started = time.monotonic()
    work = Path(workdir or tempfile.mkdtemp(prefix="streamlearner-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    k = settings.kafka
    broker = None
    if k.bootstrap is None:
        broker = EmbeddedBroker(log_path=work / "broker.log").start()
        bootstrap = broker.bootstrap
        print(f"embedded Kafka-protocol broker (Tansu) on {bootstrap}")
    else:
        bootstrap = k.bootstrap
    port = settings.metrics.port if "METRICS_PORT" in os.environ else free_port()
    app_id = f"{k.app_id}-demo-{int(time.time())}"
    worker = None
    follower = None
    try:
        create_topics(bootstrap, settings_topics(k), replication_factor=k.replication_factor,
                      client_kwargs=k.client_kwargs())
        worker = start_worker({**security_env(k),
                               "KAFKA_BOOTSTRAP": bootstrap, "KAFKA_APP_ID": app_id,
                               "KAFKA_SESSION_TIMEOUT_S": "10",
                               "METRICS_PORT": str(port),
                               "CHECKPOINT_DIR": str(work / "checkpoints")},
                              work / "worker.log")
        metrics_url = f"http://{settings.metrics.host}:{port}/metrics"
        print(f"worker pid {worker.pid}, log {work / 'worker.log'}; loading the encoder ...")
        wait_http(metrics_url, timeout=180, proc=worker)
        print(f"worker up: {metrics_url}")
        follower = Follower(bootstrap, k.predictions_topic, k.dead_letter_topic,
                            client_kwargs=k.client_kwargs()).start()

        streams = [(k.feedback_topic, read_stream(DEMO_DIR / "feedback.jsonl", feedback_limit)),
                   (k.market_topic, read_stream(DEMO_DIR / "market.jsonl", market_limit))]
        labels: dict[str, str] = {}
        order: dict[str, list[str]] = {}
        expected_valid = 0
        published = 0
        bad = [p for p, _ in MALFORMED]
        producer = make_producer(bootstrap, **k.client_kwargs())
        bar = tqdm(total=sum(len(s) for _, s in streams), unit="pred", desc="predictions",
                   dynamic_ncols=True)
        for topic, good in streams:
            ids = []
            for line in good:
                ev = orjson.loads(line)
                ids.append(ev["id"])
                if "label" in ev:
                    labels[ev["id"]] = ev["label"]
            order[topic] = ids
            expected_valid += len(good)
            batch = interleave(good, bad if topic == k.feedback_topic else bad[:2], duplicates=5)
            published += publish(bootstrap, topic, batch, rate=rate, progress=False,
                                 producer=producer)
        producer.close()
        n_bad = len(bad) + 2
        deadline = time.monotonic() + timeout_s
        last = 0
        while time.monotonic() < deadline:
            got = len(follower.predictions)
            bar.update(got - last)
            last = got
            try:
                samples = scrape(metrics_url)
            except OSError:
                samples = {}
            bar.set_postfix(updates=int(metric_sum(samples, "streamlearner_learner_updates_total")),
                            dead=len(follower.dead_letters),
                            acc_fb=f"{metric_sum(samples, 'streamlearner_learner_prequential_accuracy_ratio', task='feedback'):.2f}",
                            acc_mk=f"{metric_sum(samples, 'streamlearner_learner_prequential_accuracy_ratio', task='market'):.2f}")
            events_done = metric_sum(samples, "streamlearner_stream_events_total")
            if got >= expected_valid and len(follower.dead_letters) >= n_bad \
                    and events_done >= published:
                break
            if worker.poll() is not None:
                raise RuntimeError(f"worker exited with {worker.returncode}; see {work / 'worker.log'}")
            time.sleep(0.5)
        bar.close()
        samples = scrape(metrics_url)
        wall = time.monotonic() - started
        summary = {
            "wall_seconds": round(wall, 1),
            "published": published,
            "accepted": metric_sum(samples, "streamlearner_stream_events_total", outcome="accepted"),
            "duplicates": metric_sum(samples, "streamlearner_stream_events_total", outcome="duplicate"),
            "dead_letters": metric_sum(samples, "streamlearner_stream_dead_letters_total"),
            "dead_letter_reasons": sorted({d["reason"] for d in follower.dead_letters}),
            "predictions": len(follower.predictions),
            "updates": metric_sum(samples, "streamlearner_learner_updates_total"),
            "model_version": metric_sum(samples, "streamlearner_learner_model_version"),
            "metrics_url": metrics_url,
            "tasks": {},
        }
        first_pred = min((p["ts"] for p in follower.predictions.values()), default=0)
        last_pred = max((p["ts"] for p in follower.predictions.values()), default=0)
        span = max(1e-9, last_pred - first_pred)
        summary["events_per_second"] = round(summary["accepted"] / span, 1)
        summary["updates_per_second"] = round(summary["updates"] / span, 2)
        for topic, task in k.source_topics().items():
            early, late, n = prequential(labels, follower.predictions, order.get(topic, []))
            summary["tasks"][task] = {"labeled": n, "prequential_early": round(early, 3),
                                      "prequential_late": round(late, 3)}
        (work / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_prequential(labels, follower.predictions,
                         {task: order.get(topic, []) for topic, task in k.source_topics().items()},
                         work / "prequential.png")
        print_summary(summary, work)
        ok = summary["predictions"] >= expected_valid
        return 0 if ok else 1
    finally:
        if follower is not None:
            follower.stop()
        if worker is not None:
            stop_worker(worker)
        if broker is not None:
            broker.stop()


def plot_prequential(labels: dict[str, str], predictions: dict[str, dict],
                     order: dict[str, list[str]], path: Path, window: int = 100) -> Path | None:
    """Rolling prequential accuracy per task along the stream (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a nicety; the summary numbers stand without it
        return None
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=110)
    for task, ids in order.items():
        hits = [predictions[i]["label"] == labels[i] for i in ids if i in labels and i in predictions]
        if not hits:
            continue
        rolling = [sum(hits[max(0, j - window + 1):j + 1]) / (j + 1 - max(0, j - window + 1))
                   for j in range(len(hits))]
        ax.plot(range(1, len(hits) + 1), rolling, label=f"{task} ({len(hits)} labeled)")
    ax.set_xlabel("labeled events of the task, in stream order")
    ax.set_ylabel(f"prequential accuracy\n(rolling {window})")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Predicted before learned: accuracy along the demo stream")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def print_summary(s: dict, work: Path) -> None:
    print("\n=== streamlearner demo summary ===")
    print(f"wall time            {s['wall_seconds']:.0f} s")
    print(f"events published     {s['published']}  (accepted {s['accepted']:.0f}, "
          f"duplicates {s['duplicates']:.0f}, dead letters {s['dead_letters']:.0f})")
    print(f"dead-letter reasons  {', '.join(s['dead_letter_reasons'])}")
    print(f"predictions          {s['predictions']}")
    print(f"updates              {s['updates']:.0f}  (model version {s['model_version']:.0f})")
    print(f"throughput           {s['events_per_second']} events/s, "
          f"{s['updates_per_second']} updates/s")
    for task, t in s["tasks"].items():
        print(f"prequential {task:<8} first 20%: {t['prequential_early']:.1%}   "
              f"last 20%: {t['prequential_late']:.1%}   ({t['labeled']} labeled)")
    print(f"metrics were at      {s['metrics_url']}")
    print(f"summary, logs, checkpoints in {work}")
