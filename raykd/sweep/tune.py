"""``raykd sweep CONFIG``: a Ray Tune search over any fields of any method's config.

The config is a normal config plus a ``sweep:`` section::

    sweep:
      metric: ds            # or accuracy
      num_samples: 1        # repeats of the grid / samples drawn by the searcher
      search: basic         # basic (grid + random) | optuna
      scheduler: asha       # or none
      space:
        train.lr: {loguniform: [0.001, 0.02]}
        losses.0.temperature: {choice: [2, 4, 8]}
        student.args.widths: {grid: [[4, 8], [8, 16]]}   # architecture axes (methods with `students`)

Each trial is the method's own ``run(cfg, ctx)`` (:class:`raykd.method.Method`) on the trial's config:
its rows go into the sweep's results table under run id ``<sweep run id>/<trial id>``. A method whose
run trains with Ray Train reports every epoch to Tune (``TuneReportCallback`` through
``ctx.train_callbacks``), so ASHA can stop poor trials early; otherwise the trial's best row is
reported once at its end. A trial of one worker of a method that allows it (kd) trains in the
trial's own process: no worker group per trial, and Tune reuses the process (its imports and prepared
data) for the next trial; the trial asks for that worker's CPUs. The method's ``prepare`` (kd: train or load the teacher once) runs before
the search. For methods with ``students``, a trial trains one student (``student...`` keys edit
``students[0]``).

The sweep's id is the config's run id, so the same command again restores the interrupted Tuner
(``Tuner.restore``: unfinished and errored trials run again; finished trials keep their rows).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from ray import tune

from raykd.config import SPACE_KINDS, _set_dotted, parse_config
from raykd.errors import UserError
from raykd.lifecycle import RunContext, make_context
from raykd.method import get_method
from raykd.runtime import verbose

TRIAL_DRIVER_CPU = 0.01


def to_tune(key: str, spec: Any):
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise UserError(f"sweep.space.{key}: expected one of {{{', '.join(SPACE_KINDS)}: ...}}, got {spec!r}")
    kind, v = next(iter(spec.items()))
    try:
        if kind == "grid":
            return tune.grid_search(list(v))
        if kind == "choice":
            return tune.choice(list(v))
        if kind == "uniform":
            return tune.uniform(float(v[0]), float(v[1]))
        if kind == "loguniform":
            return tune.loguniform(float(v[0]), float(v[1]))
        if kind == "randint":
            return tune.randint(int(v[0]), int(v[1]))
        return tune.quniform(float(v[0]), float(v[1]), float(v[2]))
    except (TypeError, ValueError, IndexError) as e:
        raise UserError(f"sweep.space.{key}: bad {kind} values {v!r} ({e})") from None


def trial_config(base: dict, sampled: dict) -> dict:
    """The base config with one trial's sampled values set (``student...`` keys edit ``students[0]``,
    and a trial of a method with ``students`` trains one student)."""
    cfg = copy.deepcopy(base)
    cfg.pop("sweep", None)
    if "students" in cfg:
        cfg["students"] = cfg["students"][:1]
    for key, value in sampled.items():
        target, dotted = cfg, key
        if "students" in cfg and (key == "student" or key.startswith("student.")):
            if key == "student":
                cfg["students"] = [value]
                continue
            target, dotted = cfg["students"][0], key[len("student."):]
        try:
            _set_dotted(target, dotted, value)
        except (IndexError, KeyError, TypeError, ValueError):
            raise UserError(f"sweep.space.{key}: no such field in this config") from None
    return cfg


def _display(spec: dict) -> str:
    from raykd.config import ModelSpec

    return ModelSpec.model_validate(spec).display


def validate_space(base: dict, space: dict) -> dict:
    """Turn the YAML space into Tune's, checking that every trial config would validate."""
    out = {}
    for key, spec in space.items():
        out[key] = to_tune(key, spec)
        kind, values = next(iter(spec.items()))
        probes = values if kind in ("grid", "choice") else [values[0]]
        for v in probes:
            try:
                parse_config(trial_config(base, {key: v}), f"sweep.space.{key}={v!r}")
            except UserError as e:
                raise UserError(str(e)) from None
    return out


def _trial(sampled: dict, shared: dict) -> None:
    """One Tune trial: the method's run on this trial's config; its rows are keyed ``<sweep>/<trial>``."""
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = parse_config(trial_config(shared["base"], sampled), f"sweep trial {sampled}")
    trial_id = tune.get_context().get_trial_id()
    own = shared.get("in_process", False)  # the trial trains in this process: it reports to Tune itself
    ctx = RunContext(cfg, Path(shared["out"]), f"{shared['sweep_id']}/{trial_id}", Path(shared["storage"]),
                     callbacks=[] if own else [TuneReportCallback()], trial=trial_id, trial_in_process=own)
    rows = get_method(cfg.method).run(cfg, ctx)
    if not ctx.reported:  # the run reported no epochs to Tune (not a Train run, or resumed after it)
        tune.report(headline(rows, shared["metric"]))


def headline(rows: list[dict], metric: str) -> dict:
    """The trial's best row (by the sweep's metric) as Tune metrics."""
    rows = [r for r in rows if r.get("method") != "teacher"] or rows
    if not rows:
        raise RuntimeError("the trial's run returned no results rows")
    key = (lambda r: -_num(r.get("ds"))) if metric == "ds" else (lambda r: _num(r.get("accuracy")))
    best = max(rows, key=key)
    return {"accuracy": _num(best.get("accuracy")), "ds": _num(best.get("ds")), "epoch": 1, "rows": len(rows)}


def _num(x) -> float:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return x if math.isfinite(x) else float("nan")


def _searcher(sweep: dict, metric: str, mode: str):
    if sweep.get("search", "basic") == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode)
    return None


def _scheduler(sweep: dict, metric: str, mode: str, max_t: int):
    if sweep.get("scheduler", "none") == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # stop_last_trials=False: a trial that reaches max_t finishes its run (and records its row)
        return ASHAScheduler(time_attr="epoch", max_t=max_t, stop_last_trials=False,  # metric, mode: the TuneConfig's
                             grace_period=int(sweep.get("grace_period", 1)), reduction_factor=int(sweep.get("reduction_factor", 2)))
    return None


def trial_resources(cfg) -> dict:
    """What one trial asks Tune for: the CPUs (and GPU) of its one worker when it trains in its own
    process; else a sliver, its Ray Train workers asking for their own."""
    engine = getattr(cfg, "engine", None)
    if engine is None or not trains_in_trial(cfg):
        return {"CPU": TRIAL_DRIVER_CPU}
    from raykd.engine.trainer import uses_gpu

    e = engine.resolved(concurrent=True)
    return {"CPU": e.cpus_per_worker, **({"GPU": 1} if uses_gpu(e) else {})}


def trains_in_trial(cfg) -> bool:
    """Whether each trial trains in its own process (a method that supports it, one worker, the teacher
    in it): Tune then reuses the trial processes, and no worker group is started per trial."""
    from raykd.engine.trainer import in_trial_process

    engine = getattr(cfg, "engine", None)
    return engine is not None and get_method(cfg.method).trial_in_process and in_trial_process(engine)


def max_concurrent(cfg) -> int:
    """Trials that fit the cluster at once: CPUs / what one trial takes (its own process, or its workers)."""
    engine = getattr(cfg, "engine", None)
    if engine is None:
        return 1
    if trains_in_trial(cfg):
        per_trial = trial_resources(cfg)["CPU"]
    else:
        e = engine.resolved(concurrent=True)
        per_trial = e.num_workers * e.cpus_per_worker + TRIAL_DRIVER_CPU
    return max(1, int(math.floor(ray.cluster_resources().get("CPU", 1) / per_trial)))


def sweep(cfg, fresh: bool = False, shutdown: bool = False) -> pd.DataFrame:
    """Run (or resume) the sweep declared in ``cfg.sweep``; returns the sweep's results rows.
    ``shutdown``: stop the private Ray this process started while the report is written (the CLI)."""
    from raykd.plugins import loaded
    from raykd.report import report
    from raykd.runtime import init_ray, shutdown_in_background

    if getattr(cfg, "sweep", None) is None:
        raise UserError("sweep: this config has no `sweep:` section with a search space")
    method = get_method(cfg.method)
    ctx = make_context(cfg, fresh)
    base = cfg.model_dump(mode="json")
    space = validate_space(base, cfg.sweep.space)
    started = init_ray(cfg.ray.address, num_cpus=cfg.ray.num_cpus, dashboard=cfg.ray.dashboard, plugins=loaded())
    if method.prepare is not None:
        method.prepare(cfg, ctx)
    shared = {"base": base, "out": str(ctx.out_dir), "storage": str(ctx.storage), "sweep_id": ctx.run_id,
              "metric": cfg.sweep.metric, "in_process": trains_in_trial(cfg)}
    grid = _tuner(cfg, ctx, space, shared, fresh).fit()
    errors = [r.error for r in grid if r.error]
    record_stopped(cfg, ctx, grid)
    df = ctx.rows(include_trials=True)
    print(f"[raykd] sweep {ctx.run_id}: {len(df)} rows, {len(errors)} trials errored", flush=True)
    stopping = shutdown_in_background() if shutdown and started else None  # only the Ray this call started
    if len(df):
        report(ctx.out_dir, df=df, a=cfg.metric.a, size=cfg.metric.size)
    if stopping is not None:
        stopping.join()
    return df


def record_stopped(cfg, ctx: RunContext, grid) -> None:
    """A row for each trial that a scheduler stopped early (it was killed before it wrote one), from
    its last reported metrics, marked ``stopped_early`` in ``extra``: the trade-off plot shows it."""
    from raykd.results import make_row

    done = ctx.rows(include_trials=True)
    have = set(done["run_id"]) if len(done) else set()
    rows = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id")  # Tune adds it to every result
        run_id = f"{ctx.run_id}/{trial_id}"
        if r.error or not r.metrics or not trial_id or run_id in have or "accuracy" not in r.metrics:
            continue
        m = r.metrics
        size = {k: (m.get("student_size") if k == cfg.metric.size else None) for k in ("params", "bytes", "macs")}
        rows.append({**make_row(method=cfg.method, item="stopped-early", dataset=getattr(getattr(cfg, "data", None), "name", ""),
                                student=", ".join(f"{k}={v}" for k, v in r.config.items()), accuracy=m["accuracy"],
                                params=size["params"] if size["params"] is not None else float("nan"),
                                bytes=size["bytes"], macs=size["macs"], a=cfg.metric.a, size=cfg.metric.size,
                                extra={"stopped_early": True, "epochs": m.get("epoch"), "sampled": r.config}),
                     "ds": m.get("ds", float("nan")), "run_id": run_id})
    if rows:
        from raykd.results import append_rows

        append_rows(ctx.out_dir, rows)


def _tuner(cfg, ctx: RunContext, space: dict, shared: dict, fresh: bool) -> tune.Tuner:
    """A new Tuner, or the interrupted one restored (same sweep id, not ``--fresh``)."""
    sw = cfg.sweep
    metric, mode = sw.metric, ("min" if sw.metric == "ds" else "max")
    # a trial either trains in its own process (its worker's CPUs) or only drives Ray Train / Ray tasks,
    # which request their own resources (a sliver)
    trainable = tune.with_resources(tune.with_parameters(_trial, shared=shared), trial_resources(cfg))
    name = ctx.ray_name("sweep")
    path = ctx.storage / name
    param_space = dict(space)
    if not fresh and tune.Tuner.can_restore(str(path)):
        print(f"[raykd] resuming sweep {ctx.run_id} from {path}", flush=True)
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True, param_space=param_space)
    max_t = cfg.train.epochs if hasattr(cfg, "train") else 1
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=sw.num_samples,
                                    search_alg=_searcher(sw.model_dump(), metric, mode),
                                    scheduler=_scheduler(sw.model_dump(), metric, mode, max_t),
                                    max_concurrent_trials=sw.max_concurrent_trials or max_concurrent(cfg),
                                    reuse_actors=True),  # a trial's process (imports, prepared data) serves the next
        run_config=tune.RunConfig(name=name, storage_path=str(ctx.storage), callbacks=_loggers(ctx, name),
                                  failure_config=tune.FailureConfig(max_failures=sw.max_failures),
                                  # Tune's trial tables and config boxes only with --verbose: the console
                                  # holds each trial's epoch lines and the results table
                                  verbose=1 if verbose() else 0))


def _loggers(ctx: RunContext, name: str) -> list:
    """Tune writes TensorBoard events by itself (TBXLoggerCallback); MLflow too when it is installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        return []
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return [MLflowLoggerCallback(tracking_uri=(ctx.out_dir / "mlruns").as_uri(), experiment_name=name)]
