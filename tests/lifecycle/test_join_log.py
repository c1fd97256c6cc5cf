"""Persistence of the pending store with the model: incremental files, a small reference in
each checkpoint, and exactly-once training across crashes with Kafka's redelivery."""

import math
import random
from collections import Counter

import pytest

from lifecycle.join import JoinConfig, PendingStore
from lifecycle.join_log import LabelLog, LabelLogError

from .recorded import merged, recorded_stream

CONFIG = JoinConfig(max_age_s=60.0, label_wait_s=10.0, lateness_s=0.0, correction="retrain")


def fresh(path, **kw):
    store, log = PendingStore(CONFIG), LabelLog(path, **kw)
    log.restore(store, None)
    return store, log


def feed_some(store, records):
    for kind, rec in records:
        store.add_event(rec) if kind == "E" else store.add_label(rec)


def test_round_trip_through_snapshot_and_logs(tmp_path):
    records = merged(*recorded_stream(n=300, seed=1))
    store, log = fresh(tmp_path)
    refs = []
    for start in range(0, len(records), 40):
        feed_some(store, records[start:start + 40])
        if start % 80 == 0:
            store.take_ready(5)      # some trained, some still queued in the state
        refs.append(log.persist(store))
        again = PendingStore(CONFIG)
        LabelLog(tmp_path).restore(again, refs[-1])
        assert again.state_dict() == store.state_dict(), start
    assert refs[0]["seq"] == 0 and refs[-1]["seq"] > 3   # a snapshot, then deltas
    assert set(refs[-1]) == {"format", "gen", "seq", "sha256"}


def test_a_log_is_small_and_compaction_bounds_the_chain(tmp_path):
    records = merged(*recorded_stream(n=600, seed=2))
    store, log = fresh(tmp_path, compact_min_ops=50, keep_refs=3)
    kinds = []
    for start in range(0, len(records), 20):
        feed_some(store, records[start:start + 20])
        store.take_ready()
        ref = log.persist(store)
        kinds.append(log.last_persist["kind"])
        assert log.last_persist["ops"] <= 80 or kinds[-1] == "snapshot"
    assert kinds.count("snapshot") >= 3 and kinds.count("log") > kinds.count("snapshot")
    assert len(log.generations()) <= 3          # older generations collected
    again = PendingStore(CONFIG)
    LabelLog(tmp_path).restore(again, ref)
    assert again.state_dict() == store.state_dict()


def test_a_failed_persist_loses_nothing(tmp_path, monkeypatch):
    records = merged(*recorded_stream(n=200, seed=3))
    store, log = fresh(tmp_path)
    feed_some(store, records[:50])
    log.persist(store)
    feed_some(store, records[50:100])
    import lifecycle.join_log as join_log

    real = join_log._write
    monkeypatch.setattr(join_log, "_write", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        log.persist(store)
    monkeypatch.setattr(join_log, "_write", real)
    feed_some(store, records[100:150])
    ref = log.persist(store)
    again = PendingStore(CONFIG)
    LabelLog(tmp_path).restore(again, ref)
    assert again.state_dict() == store.state_dict()


def test_damaged_or_missing_files_refuse_to_restore(tmp_path):
    records = merged(*recorded_stream(n=100, seed=4))
    store, log = fresh(tmp_path)
    feed_some(store, records[:30])
    log.persist(store)
    feed_some(store, records[30:60])
    ref = log.persist(store)
    path = tmp_path / f"gen-{ref['gen']:08d}" / "log-000001.jsonl"
    data = path.read_bytes()
    path.write_bytes(data.replace(b"text number", b"text NUMBER", 1))
    with pytest.raises(LabelLogError, match="checksum"):
        LabelLog(tmp_path).restore(PendingStore(CONFIG), ref)
    path.unlink()
    with pytest.raises(LabelLogError, match="missing"):
        LabelLog(tmp_path).restore(PendingStore(CONFIG), ref)
    with pytest.raises(LabelLogError, match="reference"):
        LabelLog(tmp_path).restore(PendingStore(CONFIG), {"gen": 1})


def test_persist_needs_a_restored_store(tmp_path):
    with pytest.raises(RuntimeError, match="restore"):
        LabelLog(tmp_path).persist(PendingStore(CONFIG))
    with pytest.raises(ValueError, match="keep_refs"):
        LabelLog(tmp_path, keep_refs=1)


def run_worker(path, records, *, crashes=(), batch=16, every=4, overlap_rng=None):
    """A worker's loop over the stream: batches of records; what is joined is trained in
    micro-batches of 8 (leftovers wait in the store's ready queue, which is checkpointed);
    a checkpoint every ``every`` batches (store files, then the journal position and the
    consumer offset are committed). At each crash point everything in memory is lost; the
    restart restores the last checkpoint, cuts the journal back to it and is redelivered
    from the committed offset -- or earlier (acked but not yet committed offsets)."""
    store, log = fresh(path)
    journal, dead = [], []
    committed = {"offset": 0, "journal": 0, "ref": None}
    pos, n_batches, crashes = 0, 0, sorted(crashes)
    while pos < len(records):
        chunk = records[pos:pos + batch]
        feed_some(store, chunk)
        while store.ready >= 8:
            journal += [(j.id, j.label, j.kind) for j in store.take_ready(8)]
        dead += [r.label.payload for r in store.take_expired()]
        pos += len(chunk)
        n_batches += 1
        if n_batches % every == 0:
            committed = {"offset": pos, "journal": len(journal), "ref": log.persist(store)}
        if crashes and n_batches == crashes[0]:
            crashes.pop(0)
            store, log = PendingStore(CONFIG), LabelLog(path)
            log.restore(store, committed["ref"])
            del journal[committed["journal"]:]
            back = overlap_rng.randrange(0, batch * every) if overlap_rng else 0
            pos = max(0, committed["offset"] - back)
    store.advance(math.inf)
    journal += [(j.id, j.label, j.kind) for j in store.take_ready()]
    dead += [r.label.payload for r in store.take_expired()]
    return Counter(journal), set(dead)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_matchable_label_is_trained_exactly_once_across_crashes(tmp_path, seed):
    records = merged(*recorded_stream(n=500, seed=10 + seed))
    trained, dead = run_worker(tmp_path / "clean", records)
    assert trained and all(n == 1 for (i, y, kind), n in trained.items() if kind != "correction")
    assert len({i for i, _, kind in trained if kind == "label"}) == \
        sum(1 for _, _, kind in trained if kind == "label")
    rng = random.Random(seed)
    n_batches = math.ceil(len(records) / 16)
    crashes = sorted(rng.sample(range(2, n_batches), 6))
    crashed_trained, crashed_dead = run_worker(tmp_path / "crashy", records, crashes=crashes,
                                               overlap_rng=rng)
    assert crashed_trained == trained
    assert crashed_dead == dead   # dead letters are at least once: the same set
