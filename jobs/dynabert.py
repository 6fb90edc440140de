"""``ray job submit`` entry point for DynaBERT-adaptive training (a ``method: dynabert`` config).

    ray job submit --working-dir . -- python jobs/dynabert.py configs/dynabert_ckd.yaml [--set dynabert.train.epochs=2 ...]

Inside a job Ray is already running (RAY_ADDRESS is set), so this connects to it; run locally it
starts Ray in-process. The config is ``{name, method: dynabert, output_dir, ray, metric, dynabert: {...}}``.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from raykd.cli import init_ray
from raykd.config import MetricConfig, RayConfig, apply_overrides, load_yaml
from raykd.errors import UserError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    from raykd.distill.dynabert import DynaBertSettings, run

    try:
        raw = apply_overrides(load_yaml(args.config), args.set)
        if raw.get("method") != "dynabert":
            raise UserError(f"{args.config}: method must be 'dynabert', got {raw.get('method')!r}")
        try:
            settings = DynaBertSettings.model_validate(raw.get("dynabert") or {})
            ray_cfg, metric = RayConfig.model_validate(raw.get("ray") or {}), MetricConfig.model_validate(raw.get("metric") or {})
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(["dynabert", *(str(part) for part in e["loc"])])
            raise UserError(f"{args.config}: {where}: {e['msg'].removeprefix('Value error, ')}") from None
        init_ray(ray_cfg)
        run(settings, raw.get("output_dir", f"runs/{raw.get('name', 'dynabert')}"), metric=metric, name=raw.get("name", "dynabert"))
    except UserError as e:
        print(f"raykd: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
