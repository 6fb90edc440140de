"""``raykd sweep CONFIG``: a Ray Tune search over any fields of a distillation config.

The config is a normal ``method: kd`` config plus a ``sweep:`` section::

    sweep:
      metric: ds            # or accuracy
      num_samples: 1        # repeats of the grid / samples drawn by the searcher
      search: basic         # basic (grid + random) | optuna
      scheduler: asha       # or none
      space:
        train.lr: {loguniform: [0.001, 0.02]}
        losses.0.temperature: {choice: [2, 4, 8]}
        student.args.widths: {grid: [[4, 8], [8, 16]]}   # architecture axes
        student: {grid: [{name: cnn, args: {...}}, {name: lenet5}]}

Each trial trains one student (``student`` defaults to ``students[0]``) with a ``TorchTrainer`` (one
Tune trial may use several Train workers); per-epoch metrics, DS included, reach Tune through
``TuneReportCallback`` so ASHA can stop poor trials early. The teacher is trained (or read from the
cache) once before the search; with ``engine.teacher_cache`` its outputs are computed once too.
Every finished trial writes its results row keyed by trial id (a retried or resumed trial leaves
one row); at the end the leaderboard and plots are drawn. ``--resume RUN_DIR`` continues an
interrupted sweep with ``Tuner.restore``.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from raykd.config import SPACE_KINDS, parse_config
from raykd.errors import UserError

TRIAL_DRIVER_CPU = 0.01
# one-section methods that `raykd sweep` runs as whole trials: method -> "module:function", called as
# function(settings, out_dir) and returning results rows (the first row is the trial's headline)
SECTION_SWEEPS = {"dataset_distill": "raykd.distill.dataset:run"}


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
    """The base config with one trial's sampled values set (``student...`` keys edit students[0])."""
    from raykd.config import _set_dotted

    cfg = copy.deepcopy(base)
    cfg.pop("sweep", None)
    if cfg.get("method") in SECTION_SWEEPS:  # one-section methods: plain dotted keys
        for key, value in sampled.items():
            try:
                _set_dotted(cfg, key, value)
            except (IndexError, KeyError, TypeError, ValueError):
                raise UserError(f"sweep.space.{key}: no such field in this config") from None
        return cfg
    cfg["students"] = [cfg.get("students", [{}])[0] if cfg.get("students") else {"name": "cnn"}]
    for key, value in sampled.items():
        try:
            if key == "student":
                cfg["students"] = [value]
            elif key.startswith("student."):
                _set_dotted(cfg["students"][0], key[len("student."):], value)
            else:
                _set_dotted(cfg, key, value)
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


def _run_trial(config: dict) -> None:
    """One Tune trial: train the student of this trial's config on Ray Train and write its row."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from raykd.distill.base import TaskSpec, build_method
    from raykd.distill.kd import save_student
    from raykd.engine.checkpoint import load_weights
    from raykd.engine.trainer import fit
    from raykd.models.size import size_report
    from raykd.results import append_rows, config_hash, make_row

    ctx = config["_ctx"]
    sampled = {k: v for k, v in config.items() if k != "_ctx"}
    cfg = parse_config(trial_config(ctx["base"], sampled))
    trial_id = tune.get_context().get_trial_id()
    spec = cfg.students[0]
    task = TaskSpec(dataset=cfg.data.model_dump(), student={"name": spec.name, "args": spec.args},
                    teacher={"name": cfg.teacher.name, "args": cfg.teacher.args, "weights": ctx["teacher_weights"]},
                    losses=[l.as_dict() for l in cfg.losses], train=cfg.train.model_dump() | {"seed": cfg.train.seed + cfg.seed},
                    extra={"student_init": cfg.student_init})
    method = build_method(task)
    student = method.build_student()
    example = method.example_input(method.load_split("test"))
    s_size = size_report(student, example, latency=False)
    t_size = ctx["teacher_size"]
    size_key = cfg.metric.size
    ds_ref = {"size_s": s_size[size_key], "size_t": t_size[size_key], "acc_t": ctx["teacher_accuracy"], "a": cfg.metric.a}
    t0 = time.time()
    result = fit(task, cfg.engine.model_dump(), f"trial-{trial_id}", ctx["storage"], label=f"trial {trial_id} {spec.display}",
                 extra_config={"ds_ref": ds_ref}, callbacks=[TuneReportCallback()])
    with result.checkpoint.as_directory() as d:
        load_weights(student, Path(d) / "model.safetensors")
    save_student(student, Path(ctx["out"]) / "students" / trial_id, method)
    m = result.metrics
    row = make_row(method=ctx["method_label"], dataset=cfg.data.name, teacher=cfg.teacher.display, student=spec.display,
                   params=s_size["params"], bytes=s_size["bytes"], macs=s_size["macs"], accuracy=m["accuracy"],
                   teacher_params=t_size["params"], teacher_bytes=t_size["bytes"], teacher_macs=t_size["macs"],
                   teacher_accuracy=ctx["teacher_accuracy"], a=cfg.metric.a, size=size_key, wall_time_s=time.time() - t0,
                   seed=task.train["seed"], cfg_hash=config_hash(cfg.model_dump()), run_id=f"{ctx['sweep_id']}/{trial_id}",
                   eval_split=method.data.eval_split,
                   extra={"trial_id": trial_id, "sampled": sampled, "epochs": m.get("epoch"),
                          "teacher_forward_examples": m.get("teacher_forward_examples", 0.0)})
    append_rows(ctx["out"], [row], replace_run_ids=True)


def _run_section_trial(config: dict) -> None:
    """One trial of a one-section method (e.g. dataset distillation at one samples-per-class value):
    the method's own ``run`` (which uses Ray Train and Ray tasks itself) into ``trials/<id>/``; its
    rows are copied into the sweep's results table under ``<sweep_id>/<trial_id>/<method>``."""
    import importlib

    from raykd.config import METHOD_SECTIONS
    from raykd.results import append_rows

    ctx = config["_ctx"]
    sampled = {k: v for k, v in config.items() if k != "_ctx"}
    cfg = parse_config(trial_config(ctx["base"], sampled))
    module, func = SECTION_SWEEPS[cfg.method].split(":")
    settings = getattr(cfg, METHOD_SECTIONS[cfg.method][0])
    trial_id = tune.get_context().get_trial_id()
    df = getattr(importlib.import_module(module), func)(settings, Path(ctx["out"]) / "trials" / trial_id)
    rows = df.to_dict("records")
    for r in rows:
        r["run_id"] = f"{ctx['sweep_id']}/{trial_id}/{r['method']}"
        r["extra"] = json.dumps({**json.loads(r["extra"]), "trial_id": trial_id, "sampled": sampled}, default=str)
    append_rows(ctx["out"], rows, replace_run_ids=True)
    head = rows[0]
    tune.report({"accuracy": float(head["accuracy"]), "ds": float(head["ds"]), "epoch": 1,
                 "rows": len(rows), "method": head["method"]})


def _reporter(parameters: list[str], metric: str):
    """Tune's console table with the swept parameters and the headline metrics only (the default
    would print every config entry, including the sweep's shared context)."""
    metrics = list(dict.fromkeys([metric, "accuracy", "ds", "epoch"]))
    return tune.CLIReporter(parameter_columns=parameters, metric_columns=metrics, max_report_frequency=30)


def _searcher(sweep: dict, metric: str, mode: str):
    if sweep.get("search", "basic") == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=metric, mode=mode)
    return None


def _scheduler(sweep: dict, metric: str, mode: str, max_t: int):
    if sweep.get("scheduler", "none") == "asha":
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(metric=metric, mode=mode, time_attr="epoch", max_t=max_t,
                             grace_period=int(sweep.get("grace_period", 1)), reduction_factor=int(sweep.get("reduction_factor", 2)))
    return None


def max_concurrent(cfg) -> int:
    """Trials that fit the cluster at once: CPUs (or GPUs) / what one trial's workers take."""
    res = ray.cluster_resources()
    per_trial = cfg.engine.num_workers * cfg.engine.cpus_per_worker + TRIAL_DRIVER_CPU
    return max(1, int(math.floor(res.get("CPU", 1) / per_trial)))


def sweep(cfg, resume: str | None = None):
    """Run (or resume) the sweep declared in ``cfg.sweep``; returns the results table."""
    from raykd.distill.base import TaskSpec, build_method
    from raykd.distill.kd import ensure_teacher, teacher_task
    from raykd.engine.checkpoint import load_weights
    from raykd.models.size import size_report

    if getattr(cfg, "sweep", None) is None:
        raise UserError("sweep: this config has no `sweep:` section with a search space")
    sw = cfg.sweep
    out = Path(resume or cfg.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage = out / "ray"
    base = cfg.model_dump()
    space = validate_space(base, sw.space)
    if cfg.method in SECTION_SWEEPS:
        sweep_id = _sweep_id(out, cfg.name, base)
        ctx = {"base": base, "out": str(out), "sweep_id": sweep_id}
        return _tune(cfg, _run_section_trial, space, ctx, out, resume, max_t=1, max_concurrent_default=1)
    teacher = ensure_teacher(cfg, storage)
    tm = build_method(teacher_task(cfg))
    t_model = load_weights(tm.build_student(), teacher["weights"])
    t_size = size_report(t_model, tm.example_input(tm.load_split("test")), latency=False)
    if cfg.engine.teacher_cache:
        from raykd.engine.teacher_cache import get_or_build

        spec = cfg.students[0]
        get_or_build(TaskSpec(dataset=cfg.data.model_dump(), student={"name": spec.name, "args": spec.args},
                              teacher={"name": cfg.teacher.name, "args": cfg.teacher.args, "weights": teacher["weights"]},
                              losses=[l.as_dict() for l in cfg.losses], train=cfg.train.model_dump()), cfg.engine.model_dump())
    sweep_id = _sweep_id(out, cfg.name, base)
    ctx = {"base": base, "teacher_weights": teacher["weights"], "teacher_accuracy": teacher["accuracy"], "teacher_size": t_size,
           "storage": str(storage), "out": str(out), "sweep_id": sweep_id, "method_label": sw.label}
    return _tune(cfg, _run_trial, space, ctx, out, resume, max_t=cfg.train.epochs,
                 max_concurrent_default=max_concurrent(cfg))


def _sweep_id(out: Path, name: str, base: dict) -> str:
    """The sweep's id, kept in ``sweep.json`` so that a resumed sweep keeps its rows' run ids."""
    state_file = out / "sweep.json"
    sweep_id = json.loads(state_file.read_text())["sweep_id"] if state_file.exists() else f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    state_file.write_text(json.dumps({"sweep_id": sweep_id, "config": base}, default=str))
    return sweep_id


def _tune(cfg, trial_fn, space: dict, ctx: dict, out: Path, resume: str | None, max_t: int,
          max_concurrent_default: int):
    """Run (or restore) the Tuner over ``space``; then render the leaderboard of the sweep's rows."""
    from raykd.report import report
    from raykd.results import read_results

    sw, sweep_id = cfg.sweep, ctx["sweep_id"]
    metric, mode = sw.metric, ("min" if sw.metric == "ds" else "max")
    # the trial itself only drives Ray Train / Ray tasks (which request their own resources)
    trainable = tune.with_resources(trial_fn, {"CPU": TRIAL_DRIVER_CPU})
    tune_dir = out / "tune"
    if resume:
        if not (tune_dir / cfg.name).exists():
            raise UserError(f"--resume {resume}: no interrupted sweep here (expected {tune_dir / cfg.name})")
        print(f"[raykd] resuming sweep {sweep_id} from {tune_dir / cfg.name}", flush=True)
        tuner = tune.Tuner.restore(str(tune_dir / cfg.name), trainable, resume_unfinished=True, resume_errored=True,
                                   param_space={**space, "_ctx": ctx})
    else:
        tuner = tune.Tuner(
            trainable, param_space={**space, "_ctx": ctx},
            tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=sw.num_samples,
                                        search_alg=_searcher(sw.model_dump(), metric, mode),
                                        scheduler=_scheduler(sw.model_dump(), metric, mode, max_t),
                                        max_concurrent_trials=sw.max_concurrent_trials or max_concurrent_default),
            run_config=tune.RunConfig(name=cfg.name, storage_path=str(tune_dir),
                                      failure_config=tune.FailureConfig(max_failures=sw.max_failures),
                                      progress_reporter=_reporter(list(space), metric)))
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error]
    df = read_results(out)
    df = df[df["run_id"].str.startswith(f"{sweep_id}/")]
    print(f"[raykd] sweep {sweep_id}: {len(df)} rows with results, {len(errors)} trials errored", flush=True)
    report(out, df=df, a=cfg.metric.a, size=cfg.metric.size)
    return df


def add_subparser(sub) -> None:
    p = sub.add_parser("sweep", help="run a Ray Tune sweep declared in a config's `sweep:` section")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted sweep in RUN_DIR")
    p.add_argument("--output-dir", default=None, help="override output_dir (use storage every node can reach)")
    p.set_defaults(fn=cmd_sweep)


def cmd_sweep(args) -> int:
    from raykd.cli import check_data, init_ray
    from raykd.config import load_config, parse_config as _parse

    if args.resume and not args.config:
        state = Path(args.resume) / "sweep.json"
        if not state.exists():
            raise UserError(f"--resume {args.resume}: no sweep.json here; pass the run directory of a sweep")
        cfg = _parse(json.loads(state.read_text())["config"], str(state))
    elif args.config:
        overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if args.output_dir else [])
        cfg = load_config(args.config, overrides)
    else:
        raise UserError("sweep: give a CONFIG or --resume RUN_DIR")
    for line in check_data(cfg):  # bad data fails here, before any Ray work
        print(f"[raykd] {line}", flush=True)
    init_ray(cfg.ray)
    sweep(cfg, resume=args.resume)
    return 0
