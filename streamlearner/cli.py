"""``streamlearner`` command line: the roles (worker, serve, train) and the operator tools
(topics, publish, demo, dlq, distill, versions, rollback, bench, tune)."""

from __future__ import annotations

import os

# Before torch is imported: OpenMP threads that finish a kernel sleep instead of spinning. On
# shared or busy cores spinning threads steal the CPU from the event loop and from each
# other (bench/NOTES.md: head-mode updates 4x faster at load 6; no difference when idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# And before numpy is imported: numpy's bundled OpenBLAS starts one thread per core at import
# and keeps them spinning after every call (the drift tests' small products): in the worker
# they took 0.37 of 2 cores from the encoder, 257 -> 360 events/s end to end once they were
# gone (docs/performance.md). torch owns the cores here; numpy's products are tiny.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from streamlearner.settings import Settings, SettingsError, setting_specs


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default=None, metavar="FILE",
                        help="KEY=value settings file (e.g. from `streamlearner tune`); the "
                             "environment and flags beat it [env STREAMLEARNER_ENV_FILE]")
    group = parser.add_argument_group("settings (flag beats environment variable)")
    for spec in setting_specs():
        group.add_argument(spec.flag, dest=f"setting__{spec.env}", metavar=spec.env,
                           default=None, help=f"{spec.help} [env {spec.env}, default {spec.default!r}]")


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {k.removeprefix("setting__"): v for k, v in vars(args).items()
                 if k.startswith("setting__") and v is not None}
    return Settings.from_env(overrides=overrides, env_file=getattr(args, "env_file", None))


def _bootstrap(args: argparse.Namespace, settings: Settings) -> str:
    return getattr(args, "bootstrap", None) or settings.kafka.servers


def cmd_role(args: argparse.Namespace) -> int:
    from streamlearner.roles import EXIT_FAILED, run_role

    settings = _settings(args)
    if args.command == "train":
        # One trainer of several ranks (docs/distributed.md): under torchrun or our own launch,
        # rank 0 runs the role and the others follow it.
        from learner.distributed import follow, launch, ranks_from_env

        nproc = args.nproc_per_node
        if nproc < 1:
            raise SettingsError(f"--nproc-per-node must be >= 1, got {nproc}")
        ranks = ranks_from_env()
        if ranks is None and nproc > 1:
            return launch([sys.executable, "-m", "streamlearner.cli", *args.argv], nproc,
                          failed=EXIT_FAILED)
        if ranks is not None:
            code = (run_role(args.command, settings, loglevel=args.loglevel) if ranks.leader
                    else follow(settings.learner, settings.memory, ranks))
            _end_rank(code)
    return run_role(args.command, settings, loglevel=args.loglevel)


def _end_rank(code: int) -> None:
    """A rank of a trainer ends here, without the interpreter's teardown. Its work is done
    (checkpoint, journal, tracking closed; process group destroyed), but torch.distributed's
    C++ threads can still be torn down in the wrong order at exit: in one clean-clone CI run a
    rank 0 that had stopped cleanly then died of SIGABRT ("terminate called without an active
    exception"), and the trainer's clean stop read as a failure (exit 3)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cmd_topics_create(args: argparse.Namespace) -> int:
    from streams.topics import create_topics, settings_topics

    settings = _settings(args)
    k = settings.kafka
    created = create_topics(_bootstrap(args, settings), settings_topics(k),
                            replication_factor=k.replication_factor,
                            client_kwargs=k.client_kwargs())
    print(f"created: {', '.join(created) if created else 'nothing (all exist)'}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from tools.publish import iter_payloads, publish

    settings = _settings(args)
    if args.rate is not None and args.rate <= 0:
        raise SettingsError(f"--rate must be > 0, got {args.rate}")
    if args.limit is not None and args.limit < 0:
        raise SettingsError(f"--limit must be >= 0, got {args.limit}")
    k = settings.kafka
    topic = args.topic
    spec = k.task_spec(topic)
    if spec is not None and topic not in k.all_topics():
        topic = spec.topics[0]   # a task name: its first source topic
        print(f"task {spec.name}: publishing to its topic {topic}")
    payloads = iter_payloads(args.file, text_column=args.text_column,
                             label_column=args.label_column)
    n = publish(_bootstrap(args, settings), topic, payloads, rate=args.rate,
                limit=args.limit, client_kwargs=settings.kafka.client_kwargs())
    print(f"published {n} events to {topic}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tools.demo import run_demo

    return run_demo(_settings(args), feedback_limit=args.feedback, market_limit=args.market,
                    rate=args.rate, workdir=args.workdir)


def cmd_distill(args: argparse.Namespace) -> int:
    from tools.distill import run_distill

    settings = _settings(args)
    if args.layers < 1 or args.epochs < 1:
        raise SettingsError("--layers and --epochs must be >= 1")
    run_distill(settings, texts=args.texts, task=args.task, layers=args.layers,
                epochs=args.epochs, out=args.out)
    return 0


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    from tools.dlq import ReplayError, ReplayFilter, parse_since, replay

    settings = _settings(args)
    k = settings.kafka
    try:
        since = parse_since(args.since) if args.since is not None else None
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    reasons = {r.strip() for value in args.reason for r in value.split(",") if r.strip()}
    select = ReplayFilter(reasons=frozenset(reasons) or None, since=since,
                          topic_glob=args.topic_filter)

    def show(entry):
        if args.verbose:
            print(f"  {entry.key}  {entry.reason}")

    try:
        report = replay(_bootstrap(args, settings), dead_letter_topic=k.dead_letter_topic,
                        source_topics=k.source_topics(), select=select, dry_run=args.dry_run,
                        client_kwargs=k.client_kwargs(),
                        replication_factor=k.replication_factor, on_record=show)
    except ReplayError as exc:
        print(exc.report.summary())
        print(f"streamlearner: {exc}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _admin_url(args: argparse.Namespace, settings: Settings) -> str:
    return args.url or f"http://{settings.metrics.host}:{settings.metrics.port}"


def cmd_versions(args: argparse.Namespace) -> int:
    import json

    from lifecycle.rollback import kept_versions
    from tools.admin import admin_request

    settings = _settings(args)
    if args.offline:
        print(json.dumps({"versions": kept_versions(settings.checkpoint.dir)}, indent=2))
        return 0
    status, body = admin_request(_admin_url(args, settings), "/admin/versions",
                                 settings.serve.admin_token)
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    import json

    from lifecycle.rollback import rearrange
    from tools.admin import admin_request

    settings = _settings(args)
    if args.version is not None and args.version < 0:
        raise SettingsError(f"--to must be >= 0, got {args.version}")
    if args.offline:
        if args.version is None:
            raise SettingsError("--offline needs --to VERSION")
        try:
            path = rearrange(settings.checkpoint.dir, args.version,
                             keep_last=settings.checkpoint.keep_last)
        except LookupError as e:
            print(f"streamlearner: {e}", file=sys.stderr)
            return 1
        print(f"the next worker start resumes at version {args.version} ({path})")
        return 0
    body = {} if args.version is None else {"version": args.version}
    status, answer = admin_request(_admin_url(args, settings), "/admin/rollback",
                                   settings.serve.admin_token, body)
    print(json.dumps(answer, indent=2))
    return 0 if status == 200 else 1


BENCHMARKS = ("continual", "drift", "explain", "distill", "perf", "tune")


def cmd_tune(args: argparse.Namespace) -> int:
    from tuning.cli import run

    return run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    module = importlib.import_module(f"bench.{args.name}")
    return int(module.main(args.args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlearner", description=__doc__)
    parser.add_argument("--loglevel", default=os.environ.get("LOGLEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (
            ("worker", "all-in-one: serve and train in one process (the embedded default)"),
            ("serve", "a serving replica (consumer group <KAFKA_APP_ID>-serve): predictions, "
                      "samples, the HTTP API; follows the trainer's model versions"),
            ("train", "the trainer (group <KAFKA_APP_ID>-train): learns from the samples topic, "
                      "publishes model versions")):
        role = sub.add_parser(name, help=text, description=text)
        if name == "train":
            role.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                              help="one trainer made of N ranks on this machine (DDP: NCCL on "
                                   "CUDA, one GPU each; gloo on CPU); torchrun works too "
                                   "(docs/distributed.md)")
        _add_setting_flags(role)
        role.set_defaults(func=cmd_role)

    topics = sub.add_parser("topics", help="topic administration")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    create = topics_sub.add_parser("create", help="create source and output topics")
    create.add_argument("--bootstrap", help="Kafka bootstrap (default: KAFKA_BOOTSTRAP)")
    _add_setting_flags(create)
    create.set_defaults(func=cmd_topics_create)

    pub = sub.add_parser("publish", help="publish a .csv or .jsonl file to a topic")
    pub.add_argument("topic", help="a topic, or a configured task's name (its first topic)")
    pub.add_argument("file")
    pub.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    pub.add_argument("--limit", type=int, default=None, help="publish at most N events")
    pub.add_argument("--text-column", default="text")
    pub.add_argument("--label-column", default=None)
    pub.add_argument("--bootstrap", help="Kafka bootstrap (default: KAFKA_BOOTSTRAP)")
    _add_setting_flags(pub)
    pub.set_defaults(func=cmd_publish)

    demo = sub.add_parser("demo", help="embedded broker + worker + the bundled sample stream")
    demo.add_argument("--feedback", type=int, default=None,
                      help="customer-feedback events to publish (default: all bundled)")
    demo.add_argument("--market", type=int, default=None,
                      help="market-events to publish (default: all bundled)")
    demo.add_argument("--rate", type=float, default=None, help="publish rate, events/s")
    demo.add_argument("--workdir", default=None, help="where checkpoints and logs go")
    _add_setting_flags(demo)
    demo.set_defaults(func=cmd_demo)

    dist = sub.add_parser("distill", help="distil the newest checkpoint into a smaller student")
    dist.add_argument("--texts", action="append", default=[],
                      help="extra .jsonl/.csv stream text (repeatable; labeled or not)")
    dist.add_argument("--task", default="feedback", help="task of --texts events without one")
    dist.add_argument("--layers", type=int, default=1, help="student layers (the teacher's first N)")
    dist.add_argument("--epochs", type=int, default=3)
    dist.add_argument("--out", default=None, help="default: CHECKPOINT_DIR/student")
    _add_setting_flags(dist)
    dist.set_defaults(func=cmd_distill)

    versions = sub.add_parser("versions", help="versions a rollback can go to")
    versions.add_argument("--url", default=None,
                          help="worker API (default: http://METRICS_HOST:METRICS_PORT)")
    versions.add_argument("--offline", action="store_true",
                          help="read CHECKPOINT_DIR instead of asking a running worker")
    _add_setting_flags(versions)
    versions.set_defaults(func=cmd_versions)

    rollback = sub.add_parser(
        "rollback", help="serve a kept model version again (token: SERVE_ADMIN_TOKEN)")
    rollback.add_argument("--to", dest="version", type=int, default=None,
                          help="version (default: the stability guard's last good one)")
    rollback.add_argument("--url", default=None,
                          help="worker API (default: http://METRICS_HOST:METRICS_PORT)")
    rollback.add_argument("--offline", action="store_true",
                          help="worker stopped: rearrange CHECKPOINT_DIR for the next start")
    _add_setting_flags(rollback)
    rollback.set_defaults(func=cmd_rollback)

    bench = sub.add_parser("bench", help="run a benchmark from bench/ (each has its own --help)")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments of that benchmark")
    bench.set_defaults(func=cmd_bench)

    from tuning.cli import add_arguments as add_tune_arguments

    tune = sub.add_parser("tune", help="search the worker's settings on a recorded stream "
                                       "(Optuna; writes an --env-file; docs/tuning.md)")
    add_tune_arguments(tune)
    tune.set_defaults(func=cmd_tune)
    dlq = sub.add_parser("dlq", help="dead-letter topic tools")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    rep = dlq_sub.add_parser(
        "replay", help="re-publish dead letters to their source topic (idempotent)",
        description="Re-publish the original payload of selected dead letters to the source "
                    "topic it came from. Each one is re-published at most once across runs "
                    "(markers in <dead-letter topic>.replayed); fix the cause first.")
    rep.add_argument("--reason", action="append", default=[], metavar="R",
                     help="only these reasons (repeatable or comma-separated, e.g. text_too_long)")
    rep.add_argument("--since", metavar="T",
                     help="only dead letters from T on: ISO-8601, epoch seconds or an age (30m, 2h, 7d)")
    rep.add_argument("--topic-filter", metavar="GLOB",
                     help="only dead letters of source topics matching GLOB (e.g. 'customer-*')")
    rep.add_argument("--dry-run", action="store_true", help="count and list; publish nothing")
    rep.add_argument("-v", "--verbose", action="store_true",
                     help="print each dead letter re-published (topic:partition:offset reason)")
    rep.add_argument("--bootstrap", help="Kafka bootstrap (default: KAFKA_BOOTSTRAP)")
    _add_setting_flags(rep)
    rep.set_defaults(func=cmd_dlq_replay)
    return parser


class RepeatFilter(logging.Filter):
    """Lets a log message through once per ``every`` seconds (by its template and args).

    >>> f = RepeatFilter(60.0)
    >>> rec = logging.LogRecord("x", logging.ERROR, "", 0, "Topic %s not found", ("t",), None)
    >>> f.filter(rec), f.filter(rec)
    (True, False)
    """

    def __init__(self, every: float) -> None:
        super().__init__()
        self.every = every
        self._last: dict[tuple, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        import time

        key = (record.msg, str(record.args))
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.every:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[key] = now
        return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # what a launched rank runs again
    logging.basicConfig(level=args.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # kafka-python narrates every connection at INFO; keep its warnings and errors.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.root.level))
    # aiokafka logs "Topic X not found in cluster metadata" every 100 ms while it waits for a
    # missing topic; once per topic and 10 s says the same (streams/outputs.py counts them).
    logging.getLogger("aiokafka.cluster").addFilter(RepeatFilter(10.0))
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"streamlearner: bad setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
