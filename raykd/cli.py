"""``raykd`` — one command line for everything.

    raykd run CONFIG [--set key=value ...]     run an experiment (any method) from a YAML config
    raykd check CONFIG [--set ...]             validate a config and print it, without running
    raykd data list | fetch NAME               datasets: what is registered, fetch + unpack one
    raykd report RUN_DIR [--a A] [--size S]    leaderboard and plots from a results table
    raykd sweep CONFIG [--resume RUN_DIR]      Ray Tune sweep (search space in the YAML)
    raykd rl CONFIG                            dual policy distillation on RLlib (alias of run)

User errors (bad config, missing file, unknown name) print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from typing import Callable

from raykd.errors import UserError

# method -> "module:function" that runs a validated config and returns its results table
RUNNERS: dict[str, str] = {
    "kd": "raykd.distill.kd:run",
    "dpd": "raykd.rl.runner:run",
    "dataset_distill": "raykd.distill.dataset:run",
    "self_distill": "raykd.distill.self_distill:run",
    "dynabert": "raykd.distill.dynabert:run",
}


def register_runner(method: str, target: str) -> None:
    RUNNERS[method] = target


def _runner(method: str) -> Callable:
    mod, fn = RUNNERS[method].split(":")
    return getattr(importlib.import_module(mod), fn)


def init_ray(ray_cfg) -> None:
    """Connect to the cluster in ``ray.address``/``RAY_ADDRESS`` (e.g. under ``ray job submit``), else
    start an isolated, loopback-only local Ray in-process (see ``raykd.runtime``)."""
    from raykd.runtime import init_ray as start_or_join

    start_or_join(ray_cfg.address, num_cpus=ray_cfg.num_cpus, dashboard=ray_cfg.dashboard)


def data_sections(model, where: str = "") -> list[tuple[str, object]]:
    """Every ``data:`` section (a DataConfig) of a validated config, with its dotted location."""
    from pydantic import BaseModel

    from raykd.config import DataConfig

    if isinstance(model, DataConfig):
        return [(where, model)]
    found = []
    if isinstance(model, BaseModel):
        for name in type(model).model_fields:
            found += data_sections(getattr(model, name), f"{where}.{name}" if where else name)
    return found


def check_data(cfg) -> list[str]:
    """Open the data of a config on the driver, before any Ray work: a bad file fails here with one
    sentence (UserError). Returns one summary line per data section."""
    from raykd.data.prepare import prepare
    from raykd.engine.checkpoint import check_weights_file

    for section in (getattr(cfg, "teacher", None), getattr(getattr(cfg, cfg.method, None), "teacher", None)):
        if getattr(section, "checkpoint", None):
            check_weights_file(section.checkpoint)
    lines = []
    for where, section in data_sections(cfg):
        p = prepare(section.model_dump())
        names = ", ".join(p.labels.names[:10]) + (", ..." if p.num_classes > 10 else "")
        lines.append(f"{where}: {section.name}, {len(p.train['label']):,} training rows, {p.num_classes} classes ({names}); "
                     f"evaluated on {p.eval_split}: {len(p.test['label']):,} rows")
    return lines


def cmd_run(args) -> int:
    from raykd.config import load_config

    cfg = load_config(args.config, args.set)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    for line in check_data(cfg):
        print(f"[raykd] {line}", flush=True)
    runner = _runner(cfg.method)
    init_ray(cfg.ray)
    from raykd.config import METHOD_SECTIONS

    if cfg.method in METHOD_SECTIONS:  # methods configured by one section: run(settings, out_dir)
        from pathlib import Path

        from raykd.report import format_table

        section = METHOD_SECTIONS[cfg.method][0]
        import inspect

        params = inspect.signature(runner).parameters
        kwargs = {"metric": cfg.metric} if "metric" in params else {}
        if getattr(args, "resume", None):
            if "resume" not in params:
                raise UserError(f"--resume is not supported for method {cfg.method!r}")
            kwargs["resume"] = args.resume
        df = runner(getattr(cfg, section), Path(cfg.output_dir), **kwargs)
        if df is not None and len(df):
            print(f"\nResults ({cfg.output_dir}/results.csv):")
            print(format_table(df))
    else:
        runner(cfg)
    return 0


def cmd_check(args) -> int:
    from raykd.config import load_config

    cfg = load_config(args.config, args.set)
    print(json.dumps(cfg.model_dump(), indent=2, default=str))
    for line in check_data(cfg):
        print(line)
    return 0


def cmd_data(args) -> int:
    from raykd import data

    if args.action == "list":
        import pandas as pd

        print(pd.DataFrame(data.describe()).to_string(index=False))
        return 0
    if not args.name:
        raise UserError("data fetch: name a dataset, e.g. `raykd data fetch mnist`")
    data.info(args.name, "NAME")
    for split in ("train", "test"):
        arrays = data.load(args.name, split)
        print(f"{args.name} {split}: {len(arrays['label']):,} examples")
    return 0


def cmd_report(args) -> int:
    from raykd.report import report

    report(args.run_dir, a=args.a, size=args.size)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raykd", description="Distillation on Ray: model, dataset, policy and self-distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (("run", cmd_run, "run an experiment from a YAML config"),
                               ("rl", cmd_run, "run dual policy distillation (a `method: dpd` config)"),
                               ("check", cmd_check, "validate a config without running it")):
        r = sub.add_parser(name, help=helptext)
        r.add_argument("config")
        r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
        if name != "check":
            r.add_argument("--output-dir", default=None, help="override output_dir")
            r.add_argument("--resume", default=None, metavar="DIR", help="continue from checkpoints in DIR (methods that support it, e.g. dpd)")
        r.set_defaults(fn=fn)
    d = sub.add_parser("data", help="list or fetch datasets")
    d.add_argument("action", choices=["list", "fetch"])
    d.add_argument("name", nargs="?")
    d.set_defaults(fn=cmd_data)
    rep = sub.add_parser("report", help="print the leaderboard and draw plots from a results table")
    rep.add_argument("run_dir")
    rep.add_argument("--a", type=float, default=0.5, help="weight of size in DS (0..1)")
    rep.add_argument("--size", choices=["params", "bytes", "macs"], default="params")
    rep.set_defaults(fn=cmd_report)
    for extra in ("sweep", "submit"):
        mod = importlib.util.find_spec(f"raykd.{'sweep.tune' if extra == 'sweep' else 'submit'}")
        if mod is not None:
            importlib.import_module(mod.name).add_subparser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "a", None) is not None and not 0 <= args.a <= 1:
            raise UserError(f"--a {args.a}: must be in [0, 1]")
        return int(args.fn(args) or 0)
    except UserError as e:
        print(f"raykd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("raykd: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
