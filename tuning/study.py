"""The Optuna study of ``streamlearner tune``: search on the stream's head, confirm on its rest.

Objective: **delayed-prequential accuracy on the tuning segment** (the first part of the
recorded stream, replayed by :func:`tuning.replay.replay`), maximised. **Forgetting is a
constraint, not a second objective**: a trial whose mean probe forgetting at the end of the
segment exceeds ``max_forgetting`` is infeasible (TPE's ``constraints_func``), and the winner
is the best feasible trial. A second objective would leave a Pareto front to pick from by
hand, and Optuna cannot prune multi-objective trials; a bound says what users want: learn as
well as possible without forgetting more than this. Trials report their running accuracy
``reports`` times and the median pruner stops the ones below the median of earlier trials at
the same point (after a 30 % warm-up). The default bound is the stability guard's margin
(``GUARD_MARGIN``, 0.10): a winner that forgot more would have the worker roll it back. A new study's first trial is the settings as they are
(the defaults, or the base env file), so the winner is never worse than them on the tuning
segment. Lee et al. (arXiv 2404.06466) and Cha & Cho (arXiv 2403.09066) show that tuning on
the whole stream overstates continual learners: the winner and the defaults are therefore
replayed on the whole stream and compared on the **held-out rest** only.

Storage: an SQLite file in the output folder by default, or any Optuna storage URL
(PostgreSQL, MySQL): the study resumes where it stopped (``trials`` counts every finished
trial of the study, across runs) and several ``streamlearner tune`` processes with the same
storage and study name share the work. A trial whose process died is retried (heartbeats).
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .replay import ReplayResult, replay
from .space import SearchSpace, default_params

if TYPE_CHECKING:
    import torch

    from tracking.mlflow_tracker import Tracker

    from .stream import StreamEvent

log = logging.getLogger(__name__)

__all__ = ["TuneOptions", "confirm", "open_study", "run_study", "write_env_file"]

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 20                  # finished trials the study should hold in total
    study_name: str = "streamlearner"
    storage: str | None = None        # default: sqlite:///<out>/study.db
    out: str = "tune"
    seed: int = 0
    max_forgetting: float = 0.1      # the stability guard's default margin (GUARD_MARGIN)
    prune: bool = True
    reports: int = 10
    enqueue_defaults: bool = True
    timeout_s: float | None = None
    space: SearchSpace = field(default_factory=SearchSpace)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be >= 1, got {self.trials}")
        if self.reports < 1:
            raise ValueError(f"reports must be >= 1, got {self.reports}")
        if not 0 <= self.max_forgetting <= 1:
            raise ValueError(f"max_forgetting must be in [0, 1], got {self.max_forgetting}")

    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out).resolve() / 'study.db'}"


def _constraints(trial) -> tuple[float]:
    return (trial.user_attrs.get("constraint", 0.0),)


def _trial_constraints() -> bool:
    """Optuna >= 5 keeps constraints on the trial (``Trial.set_constraint``)."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def open_study(options: TuneOptions, *, warmup_steps: int = 0):
    """Create or resume the study (maximise; TPE with the forgetting constraint)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Path(options.out).mkdir(parents=True, exist_ok=True)
    url = options.storage_url()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # A trial whose process died (no heartbeat for 2 minutes) is retried once. Optuna 5
        # renamed the callback and moved constraints onto the trial (Trial.set_constraint).
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
            retry = {"heartbeat_stale_trial_callback":
                     optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
        else:
            retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        storage = optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120, **retry)
        constraints = {} if _trial_constraints() else {"constraints_func": _constraints}
        sampler = optuna.samplers.TPESampler(seed=options.seed, **constraints)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=warmup_steps)
              if options.prune else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=options.study_name, storage=storage, sampler=sampler,
                               pruner=pruner, direction="maximize", load_if_exists=True)


def _settings(base_env: Mapping[str, str], env_file: str | None, params: Mapping[str, str]):
    from streamlearner.settings import Settings

    return Settings.from_env(dict(base_env), overrides=dict(params), env_file=env_file)


def _finished(study) -> int:
    return sum(t.state.name in FINISHED for t in study.trials)


def best_feasible(study):
    """The best completed trial within the forgetting bound (None when there is none)."""
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None
            and math.isfinite(t.value)]
    feasible = [t for t in done if t.user_attrs.get("constraint", 0.0) <= 0]
    return max(feasible, key=lambda t: t.value, default=None)


def run_study(base_env: Mapping[str, str], tune_events: Sequence["StreamEvent"], options: TuneOptions, *,
              env_file: str | None = None, features: "Mapping[str, torch.Tensor] | None" = None,
              tracker: "Tracker | None" = None, parent_run=None):
    """Run the study's remaining trials on ``tune_events``; returns the study."""
    import optuna

    n = len(tune_events)
    every = max(1, n // options.reports)
    study = open_study(options, warmup_steps=max(1, int(0.3 * n)))
    base = _settings(base_env, env_file, {})
    if options.enqueue_defaults and not study.trials:
        study.enqueue_trial({k: v for k, v in options.space.defaults(base).items()},
                            user_attrs={"defaults": True}, skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        params = options.space.suggest(trial)
        settings = _settings(base_env, env_file, params)
        run = None
        if tracker is not None:
            run = tracker.start_run(f"trial {trial.number}", params=params, parent=parent_run,
                                    tags={"optuna.study": options.study_name,
                                          "optuna.trial": trial.number})

        def report(step: int, accuracy: float) -> None:
            if math.isnan(accuracy):
                return
            trial.report(accuracy, step)
            if run is not None:
                run.log_metrics({"delayed_prequential_accuracy": accuracy}, step=step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"accuracy {accuracy:.3f} after {step} events")

        started = time.perf_counter()
        try:
            result = replay(settings, tune_events, features=features, progress=report,
                            progress_every=every)
        except optuna.TrialPruned:
            if run is not None:
                run.set_tags({"optuna.state": "PRUNED"})
                run.end("KILLED")
            raise
        except Exception:
            if run is not None:
                run.set_tags({"optuna.state": "FAIL"})
                run.end("FAILED")
            raise
        forgetting = result.mean_forgetting
        trial.set_user_attr("forgetting", forgetting)
        trial.set_user_attr("constraint", forgetting - options.max_forgetting)
        if _trial_constraints():
            trial.set_constraint("forgetting", forgetting - options.max_forgetting)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        trial.set_user_attr("updates", result.updates)
        if run is not None:
            run.log_metrics({"delayed_prequential_accuracy": result.accuracy,
                             "forgetting": forgetting, "updates": result.updates,
                             "trained": result.trained, "seconds": result.seconds}, step=n)
            run.set_tags({"optuna.state": "COMPLETE",
                          "feasible": forgetting <= options.max_forgetting})
            run.end()
        return result.accuracy

    remaining = options.trials - _finished(study)
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, timeout=options.timeout_s,
                       catch=(ValueError,),
                       callbacks=[optuna.study.MaxTrialsCallback(
                           options.trials, states=tuple(getattr(optuna.trial.TrialState, s)
                                                        for s in FINISHED))])
    return study


def confirm(base_env: Mapping[str, str], params: Mapping[str, str] | None, events: Sequence["StreamEvent"],
            cut: int, *, env_file: str | None = None,
            features: "Mapping[str, torch.Tensor] | None" = None,
            on_segment_end: Callable | None = None) -> tuple[ReplayResult, dict]:
    """Replay the whole stream with ``params`` (None: the base settings) and measure the
    held-out rest (events ``cut`` on)."""
    settings = _settings(base_env, env_file, params or {})
    result = replay(settings, events, features=features, on_segment_end=on_segment_end)
    return result, {"tune_accuracy": result.accuracy_between(0, cut),
                    "within_forgetting_bound": None,
                    "holdout_accuracy": result.accuracy_between(cut),
                    "accuracy": result.accuracy, "forgetting": result.mean_forgetting,
                    "max_forgetting": result.max_forgetting, "evaluations": result.evaluations,
                    "seconds": round(result.seconds, 1)}


def write_env_file(path: str | Path, params: Mapping[str, str], header: Sequence[str]) -> Path:
    """``KEY=value`` lines the worker reads (``--env-file``), after ``#`` comment lines."""
    path = Path(path)
    lines = [f"# {h}" for h in header] + [f"{k}={v}" for k, v in sorted(params.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plots(study, out: Path) -> dict[str, str]:
    """Optuna's optimisation history and parameter importances as PNGs (what could be drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    written: dict[str, str] = {}
    plots = {"history.png": ovm.plot_optimization_history,
             "importances.png": ovm.plot_param_importances}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError, ImportError) as exc:
                log.warning("no %s: %s", name, exc)
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 4.5)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written[name] = str(out / name)
    del optuna
    return written


def summarize(study, options: TuneOptions) -> dict[str, Any]:
    states: dict[str, int] = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    best = best_feasible(study)
    return {
        "study": options.study_name, "storage": options.storage_url(), "trials": states,
        "max_forgetting": options.max_forgetting, "space": asdict(options.space),
        "best_trial": None if best is None else best.number,
        "best_value": None if best is None else best.value,
        "best_params": None if best is None else options.space.suggest(_fixed(best.params)),
        "best_forgetting": None if best is None else best.user_attrs.get("forgetting"),
        "defaults_value": next((t.value for t in study.trials if t.user_attrs.get("defaults")
                                and t.state.name == "COMPLETE"), None),
    }


def _fixed(params: Mapping[str, Any]):
    import optuna

    return optuna.trial.FixedTrial(dict(params))


def finish(study, options: TuneOptions, base_env: Mapping[str, str], events, cut: int, *,
           env_file: str | None = None, features=None, tracker=None, parent_run=None,
           on_segment_end=None, stream_info: dict | None = None) -> dict:
    """Confirm the winner against the base settings on the held-out rest, write the env
    file, the plots and summary.json to ``options.out``; returns the summary."""
    out = Path(options.out)
    summary = summarize(study, options)
    summary["stream"] = dict(stream_info or {}, events=len(events), tune_events=cut,
                             holdout_events=len(events) - cut)
    base = _settings(base_env, env_file, {})
    summary["defaults"] = {k: str(v) for k, v in default_params(base).items()}
    if summary["best_params"] is None:
        log.warning("no feasible completed trial: nothing to confirm")
    else:
        params = summary["best_params"]
        if len(events) > cut:
            _, tuned = confirm(base_env, params, events, cut, env_file=env_file,
                               features=features, on_segment_end=on_segment_end)
            _, default = confirm(base_env, None, events, cut, env_file=env_file,
                                 features=features, on_segment_end=on_segment_end)
            for side in (tuned, default):   # does the bound still hold on the whole stream?
                side["within_forgetting_bound"] = side["forgetting"] <= options.max_forgetting
            summary["confirmation"] = {"tuned": tuned, "defaults": default}
        conf = summary.get("confirmation")
        header = [f"streamlearner tune: study {options.study_name!r}, trial {summary['best_trial']} "
                  f"of {sum(summary['trials'].values())}",
                  f"delayed-prequential accuracy on the tuning segment ({cut} events): "
                  f"{summary['best_value']:.4f} (defaults {_fmt(summary['defaults_value'])}), "
                  f"probe forgetting {summary['best_forgetting']:.4f}"]
        if conf:
            header.append(f"held-out rest ({len(events) - cut} events): tuned "
                          f"{conf['tuned']['holdout_accuracy']:.4f} vs defaults "
                          f"{conf['defaults']['holdout_accuracy']:.4f}")
        header.append("use: streamlearner worker --env-file THIS_FILE")
        summary["env_file"] = str(write_env_file(out / "best.env", params, header))
    summary["plots"] = write_plots(study, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if tracker is not None and parent_run is not None:
        metrics = {"best_value": summary["best_value"]}
        conf = summary.get("confirmation")
        if conf:
            metrics.update({"holdout_accuracy_tuned": conf["tuned"]["holdout_accuracy"],
                            "holdout_accuracy_defaults": conf["defaults"]["holdout_accuracy"]})
        parent_run.log_metrics(metrics, step=sum(summary["trials"].values()))
        for path in [*summary["plots"].values(), summary.get("env_file"), out / "summary.json"]:
            if path:
                parent_run.log_artifact(path)
    return summary


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
