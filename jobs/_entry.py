"""Shared body of the ``jobs/*.py`` entry points: parse ``--config X [--set k=v ...] [--plugin P ...]``
and hand over to the ``raykd`` command line, returning its exit status (2 for a bad config, like the CLI)."""

from __future__ import annotations

import argparse


def main(command: str, description: str, argv: list[str] | None = None) -> int:
    from raykd.cli import main as raykd_main

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config, relative to the job's working_dir")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field (repeatable)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE", help="user code to import everywhere")
    p.add_argument("--output-dir", default=None, help="override output_dir (use storage every node can reach)")
    args, rest = p.parse_known_args(argv)
    cli = [command, args.config] + [a for kv in args.set for a in ("--set", kv)] + [a for x in args.plugin for a in ("--plugin", x)]
    if args.output_dir:
        cli += ["--output-dir", args.output_dir]
    return raykd_main(cli + rest)
