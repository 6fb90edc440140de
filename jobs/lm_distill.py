"""``ray job submit`` entry point for language-model distillation (a ``method: kd`` config on text).

    ray job submit --working-dir . -- python jobs/lm_distill.py configs/lm_ckd.yaml [--set train.epochs=1 ...]

Inside a job Ray is already running (RAY_ADDRESS is set), so this connects to it; run locally it
starts Ray in-process.
"""

from __future__ import annotations

import argparse
import sys

from raykd.cli import init_ray
from raykd.config import DistillConfig, load_config
from raykd.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.set)
        if not isinstance(cfg, DistillConfig):
            raise UserError(f"{args.config}: method must be 'kd' for language-model distillation, got {cfg.method!r}")
        init_ray(cfg.ray)
        from raykd.distill.kd import run

        run(cfg)
    except UserError as e:
        print(f"raykd: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
