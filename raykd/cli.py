"""``raykd`` — one command line for everything.

    raykd run CONFIG [--set key=value ...]     run an experiment (any method) from a YAML config;
                                               the same command again resumes it (--fresh: start over)
    raykd check CONFIG [--set ...]             validate a config and open its data, without running
    raykd sweep CONFIG [--set ...]             Ray Tune sweep over the config's `sweep:` space (rerun: resume)
    raykd methods                              the registered methods and their config sections
    raykd data list | fetch NAME               datasets: what is registered, fetch + unpack one
    raykd report RUN_DIR [--a A] [--size S]    leaderboard and plots from a results table
    raykd submit CONFIG --address URL          run on a cluster with `ray job submit`

``--plugin FILE.py|module`` (repeatable) imports user code that registers losses, models, datasets
or methods, in the driver and in the Ray workers (as ``plugins:`` in the config does).
User errors (bad config, missing file, unknown name) print one sentence and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from raykd.errors import UserError


def _load(args):
    from raykd.config import load_config

    overrides = list(args.set) + ([f"output_dir={args.output_dir}"] if getattr(args, "output_dir", None) else [])
    return load_config(args.config, overrides, plugins=args.plugin)


def cmd_run(args) -> int:
    from raykd.lifecycle import check_inputs, execute

    cfg = _load(args)
    for line in check_inputs(cfg):  # bad data fails here, before any Ray work
        print(f"[raykd] {line}", flush=True)
    result = execute(cfg, fresh=args.fresh, shutdown=True)  # prints the results table and writes the plots
    print(f"[raykd] results: {result.output_dir}/results.csv")
    return 0


def cmd_sweep(args) -> int:
    from raykd.lifecycle import check_inputs
    from raykd.sweep.tune import sweep

    cfg = _load(args)
    if cfg.sweep is None if hasattr(cfg, "sweep") else True:
        raise UserError(f"{args.config}: sweep: this config has no `sweep:` section with a search space")
    for line in check_inputs(cfg):
        print(f"[raykd] {line}", flush=True)
    sweep(cfg, fresh=args.fresh, shutdown=True)
    return 0


def cmd_check(args) -> int:
    from raykd.lifecycle import check_inputs, config_summary

    cfg = _load(args)
    print(json.dumps(config_summary(cfg), indent=2))
    for line in check_inputs(cfg):
        print(line)
    return 0


def cmd_methods(args) -> int:
    from raykd.registry import METHODS

    for name in METHODS.names():
        m = METHODS.get(name)
        sections = ", ".join([*m.sections, *([name] if m.settings else [])])
        print(f"{name:16s} {m.summary}\n{'':16s} sections: {sections}")
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


def _config_args(r: argparse.ArgumentParser, run: bool) -> None:
    r.add_argument("config")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    r.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import user code (losses, models, datasets, methods) here and in the Ray workers (repeatable)")
    if run:
        r.add_argument("--output-dir", default=None, help="override output_dir")
        r.add_argument("--fresh", action="store_true", help="start over instead of resuming an earlier attempt of the same run")
        r.add_argument("--verbose", action="store_true",
                       help="also Ray's own messages (worker-group start-up, every report, checkpoint paths)")


def build_parser() -> argparse.ArgumentParser:
    from raykd.submit import add_subparser as add_submit

    p = argparse.ArgumentParser(prog="raykd", description="Distillation on Ray: model, dataset, policy and self-distillation.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn, helptext in (("run", cmd_run, "run (or resume) an experiment from a YAML config"),
                               ("rl", cmd_run, "alias of run (dual policy distillation configs)"),
                               ("sweep", cmd_sweep, "run (or resume) a Ray Tune sweep declared in a config's `sweep:` section"),
                               ("check", cmd_check, "validate a config and open its data, without running")):
        r = sub.add_parser(name, help=helptext)
        _config_args(r, run=name != "check")
        r.set_defaults(fn=fn)
    m = sub.add_parser("methods", help="list the registered methods and their config sections")
    m.set_defaults(fn=cmd_methods)
    d = sub.add_parser("data", help="list or fetch datasets")
    d.add_argument("action", choices=["list", "fetch"])
    d.add_argument("name", nargs="?")
    d.set_defaults(fn=cmd_data)
    rep = sub.add_parser("report", help="print the leaderboard and draw plots from a results table")
    rep.add_argument("run_dir")
    rep.add_argument("--a", type=float, default=0.5, help="weight of size in DS (0..1)")
    rep.add_argument("--size", choices=["params", "bytes", "macs"], default="params")
    rep.set_defaults(fn=cmd_report)
    add_submit(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "verbose", False):
        import os

        os.environ["RAYKD_VERBOSE"] = "1"  # read by raykd.runtime.verbose() where Ray runs are configured
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


def entry() -> None:
    """The ``raykd`` command: :func:`main`, then exit without tearing the interpreter down.

    Everything a command writes is closed by then, Ray is shut down and the exit handlers (logging's,
    Ray's, tempfile's) have run; what is skipped is Python freeing every module and object one by one
    (about a second after a run that imported torch, pandas, matplotlib and sympy)."""
    import atexit
    import os

    rc = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    entry()
