"""``streamlearner tune``: search the worker's settings on a recorded stream.

    streamlearner tune feedback=data/demo/feedback.jsonl --trials 30 --out var/tune
    streamlearner tune --topic customer-feedback --offsets 0:20000 --trials 30 --out var/tune
    streamlearner worker --env-file var/tune/best.env

The stream is replayed in event order through the worker's learner with labels revealed
when they were recorded (docs/tuning.md); the first ``--tune-fraction`` of it is searched,
the winner and the current settings are confirmed on the rest. Writes ``best.env`` (the
worker's ``--env-file``), ``summary.json``, ``history.png`` and ``importances.png`` to
``--out``; each trial is an MLflow run (``--tracking-uri``, ``TRACKING_URI`` or
``MLFLOW_TRACKING_URI``; by default an SQLite store in ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["add_arguments", "main", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("streams", nargs="*", metavar="[TASK=]FILE",
                   help="recorded stream files (.csv or .jsonl), in order; TASK defaults to feedback")
    p.add_argument("--topic", action="append", default=[], metavar="NAME",
                   help="read this source topic instead (repeatable; no consumer group)")
    p.add_argument("--labels-topic", default=None, help="a topic of late label records to join")
    p.add_argument("--offsets", default=None, metavar="START:END",
                   help="offsets [START, END) of every partition of --topic (default: all)")
    p.add_argument("--label-delay", type=float, default=0.0, metavar="S",
                   help="delay labels inside events by S seconds of event time (files)")
    seg = p.add_mutually_exclusive_group()
    seg.add_argument("--tune-fraction", type=float, default=0.5,
                     help="the first part of the stream the search sees (default 0.5)")
    seg.add_argument("--tune-events", type=int, default=None, help="... or the first N events")
    p.add_argument("--trials", type=int, default=20, help="finished trials in the study, in total")
    p.add_argument("--study", default="streamlearner", help="study name")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--out", default="var/tune", help="output folder")
    p.add_argument("--modes", default="head", help="modes to search, e.g. head,lora")
    p.add_argument("--strategies", default="er,derpp,er+ewc,er+lwf", help="strategies to search")
    p.add_argument("--batch-sizes", default="8,16,32,64", help="micro-batch sizes to search")
    p.add_argument("--fixed", action="append", default=[], metavar="SETTING=VALUE",
                   help="keep a searched setting at this value (repeatable), e.g. MEMORY_CAPACITY=5000")
    p.add_argument("--max-forgetting", type=float, default=None,
                   help="feasible trials forget at most this much on the probe sets "
                        "(default: GUARD_MARGIN, what the stability guard tolerates)")
    p.add_argument("--no-prune", action="store_true", help="run every trial to the end")
    p.add_argument("--reports", type=int, default=10, help="intermediate reports per trial")
    p.add_argument("--no-defaults-trial", action="store_true",
                   help="do not start a new study with the current settings")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after S seconds")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--feature-cache", default=None, help="head mode: safetensors file of features")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: TRACKING_URI, "
                   "MLFLOW_TRACKING_URI, else sqlite:///OUT/mlflow.db)")
    p.add_argument("--experiment", default="streamlearner-tune", help="MLflow experiment")
    p.add_argument("--no-tracking", action="store_true", help="no MLflow runs")
    p.add_argument("--env-file", default=None, metavar="FILE",
                   help="base settings (encoder, device, probes); the environment beats it")


def _ints(text: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None


def _fixed(spec: str) -> tuple[str, str]:
    key, sep, value = spec.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--fixed must be SETTING=VALUE, got {spec!r}")
    return key.strip(), value.strip()


def load_stream(args, base):
    from .stream import StreamError, from_files, from_topics

    if args.topic:
        start, end = 0, None
        if args.offsets:
            a, sep, b = args.offsets.partition(":")
            try:
                start, end = int(a or 0), (int(b) if b else None)
            except ValueError:
                raise StreamError(f"--offsets must be START:END, got {args.offsets!r}") from None
        return from_topics(base.kafka, args.topic, labels_topic=args.labels_topic, start=start,
                           end=end, limits=base.stream)
    if not args.streams:
        raise StreamError("give recorded stream files ([TASK=]FILE) or --topic")
    tasks = set(base.kafka.source_topics().values())
    files = []
    for spec in args.streams:
        task, sep, path = spec.partition("=")
        if not sep:
            task, path = "feedback", spec
        if task not in tasks:
            raise StreamError(f"{spec}: task {task!r} is not one of {sorted(tasks)}")
        files.append((task, path))
    return from_files(files, limits=base.stream, label_delay_s=args.label_delay)


def tracker_for(args, out: Path, registry=None):
    """The tune's tracker: --tracking-uri, TRACKING_URI, MLFLOW_TRACKING_URI, else SQLite in out."""
    if args.no_tracking:
        return None
    from tracking.config import TrackingConfig
    from tracking.mlflow_tracker import Tracker

    uri = args.tracking_uri or TrackingConfig(uri=os.environ.get("TRACKING_URI", "")).resolve_uri()
    artifacts = None
    if not uri:
        uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
        artifacts = (out.resolve() / "mlruns").as_uri()
    return Tracker(uri, experiment=args.experiment, registry=registry,
                   artifact_location=artifacts, queue_size=100_000)


def run(args: argparse.Namespace) -> int:
    from streamlearner.settings import Settings

    from .replay import encode_features
    from .space import SearchSpace
    from .stream import split
    from .study import TuneOptions, finish, run_study

    base_env = dict(os.environ)
    try:
        base = Settings.from_env(base_env, env_file=args.env_file)
        space = SearchSpace(modes=tuple(m.strip() for m in args.modes.split(",") if m.strip()),
                            strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
                            batch_sizes=_ints(args.batch_sizes, "batch-sizes"),
                            fixed=tuple(_fixed(f) for f in args.fixed))
        options = TuneOptions(trials=args.trials, study_name=args.study, storage=args.storage,
                              out=args.out, seed=args.seed,
                              max_forgetting=(base.guard.margin if args.max_forgetting is None
                                              else args.max_forgetting),
                              prune=not args.no_prune, reports=args.reports,
                              enqueue_defaults=not args.no_defaults_trial,
                              timeout_s=args.timeout, space=space)
        events, rejected = load_stream(args, base)
        cut = args.tune_events if args.tune_events is not None else args.tune_fraction
        tune_events, rest = split(events, cut)
    except ValueError as exc:
        print(f"streamlearner tune: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    labeled = sum(e.label is not None for e in events)
    print(f"recorded stream: {len(events)} events ({labeled} labeled), tuning on the first "
          f"{len(tune_events)}, confirming on the last {len(rest)}"
          + (f"; not admitted: {rejected}" if rejected else ""), file=sys.stderr)
    features = None
    if "head" in space.modes:
        features = encode_features(base, [e.text for e in events], args.feature_cache)
    tracker = tracker_for(args, out)
    parent = None
    if tracker is not None:
        parent = tracker.start_run(f"study {options.study_name}",
                                   params={"trials": options.trials, "max_forgetting": options.max_forgetting,
                                           "modes": args.modes, "strategies": args.strategies,
                                           "batch_sizes": args.batch_sizes, "tune_events": len(tune_events),
                                           "holdout_events": len(rest), "streams": args.streams or args.topic},
                                   tags={"optuna.study": options.study_name})
    try:
        study = run_study(base_env, tune_events, options, env_file=args.env_file, features=features,
                          tracker=tracker, parent_run=parent)
        summary = finish(study, options, base_env, events, len(tune_events), env_file=args.env_file,
                         features=features, tracker=tracker, parent_run=parent,
                         stream_info={"sources": args.streams or args.topic, "rejected": rejected})
    finally:
        if tracker is not None:
            parent.end()
            if not tracker.close(timeout=120):
                print("streamlearner tune: some tracking calls did not finish", file=sys.stderr)
    print(json.dumps({k: summary.get(k) for k in ("study", "trials", "best_trial", "best_value",
                                                  "defaults_value", "best_params", "confirmation",
                                                  "env_file")}, indent=2, default=str))
    return 0 if summary.get("best_params") else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streamlearner tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))
