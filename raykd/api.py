"""The Python API, for notebooks and scripts::

    import raykd

    result = raykd.run("configs/mnist_kd.yaml", overrides=["train.epochs=1"])
    result.table          # the results rows of this run (a pandas DataFrame)
    result.output_dir     # where results.csv, leaderboard.csv, plots and students/ are
    result.students       # the saved students (directories)

    cfg = raykd.load_config("configs/mnist_kd.yaml")   # validated, without running
    raykd.run(cfg)

A config may also be given as a dict (the YAML's content). User code registers its own parts with
``raykd.register_loss/model/dataset/method``; name the module under ``plugins:`` so that the Ray
workers import it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raykd.config import RunConfig, load_config, parse_config
from raykd.lifecycle import RunResult, execute


def run(config: str | Path | dict | RunConfig, overrides: list[str] | None = None, *,
        plugins: list[str] | None = None, output_dir: str | Path | None = None, fresh: bool = False,
        check_data: bool = True) -> RunResult:
    """Run (or resume) an experiment of any method and return its results.

    ``config``: a YAML path, a dict, or a config from :func:`load_config`. ``overrides``: ``key=value``
    strings as with ``raykd run --set``. ``fresh``: forget an earlier attempt of the same run instead
    of resuming it. Bad input raises :class:`raykd.errors.UserError` before any Ray work."""
    cfg = _config(config, overrides, plugins)
    if output_dir is not None:
        cfg.output_dir = str(output_dir)
    if check_data:
        from raykd.lifecycle import check_inputs

        for line in check_inputs(cfg):
            print(f"[raykd] {line}", flush=True)
    return execute(cfg, fresh=fresh)


def _config(config: Any, overrides: list[str] | None, plugins: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        if overrides or plugins:
            return parse_config(_apply(config.model_dump(mode="json"), overrides), "config", plugins)
        return config
    if isinstance(config, dict):
        return parse_config(_apply(dict(config), overrides), "config", plugins)
    return load_config(config, overrides, plugins)


def _apply(raw: dict, overrides: list[str] | None) -> dict:
    from raykd.config import apply_overrides

    return apply_overrides(raw, overrides)
