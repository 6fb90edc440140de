"""Dual Policy Distillation (``method: dpd``; Lai, Zha, Li, Hu, IJCAI 2020) on RLlib.

Two peer learners (PPO or SAC) explore their own copies of one continuous-control task and each
adds a distillation term towards the peer's actions, weighted by how much better the peer values
the state (:mod:`raykd.rl.dpd` has the algorithm). Compared against two independent peers
(distillation weight 0) and one learner of the same algorithm, over several seeds:

1. One item per (mode, seed), e.g. ``dpd-seed0``, ``independent-seed0``, ``single-seed0``: an RLlib
   run trained to its step budget, checkpointed under ``checkpoints/<ray_name>``, its learning curve
   in ``curves/<ray_name>.csv`` and its metrics in ``tensorboard/<ray_name>``. A finished item records
   its results row at once; on a rerun it is skipped, and an unfinished one resumes from its newest
   checkpoint.
2. ``curves.csv``, ``curves_summary.csv`` (mean +- std over seeds) and ``curves.png`` of every item.

The config's own section is ``dpd:`` (:class:`raykd.rl.settings.DPDSettings`); no shared section applies.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from raykd.method import register_method
from raykd.results import make_row
from raykd.rl.settings import DPDSettings
from raykd.schema import FieldError


def check(cfg) -> None:
    if "seed" in cfg.model_fields_set and cfg.seed != 0:
        raise FieldError("seed", "dpd runs every seed in dpd.seeds (one item each); list them there instead")


def item_of(mode: str, seed: int) -> str:
    return f"{mode}-seed{seed}"


def curve_path(ctx, item: str) -> Path:
    return ctx.out_dir / "curves" / f"{ctx.ray_name(item)}.csv"


@register_method("dpd", settings=DPDSettings, sections={}, check=check)
def run(cfg, ctx) -> list[dict]:
    """Dual policy distillation of two RLlib peers (PPO or SAC) vs independent peers vs one learner."""
    from raykd.rl.runner import RunPaths, method_name, train_one

    s = cfg.dpd
    items = [(mode, seed) for seed in s.seeds for mode in s.modes]
    for n, (mode, seed) in enumerate(items):
        item = item_of(mode, seed)
        if ctx.done(item) is not None:
            print(f"[raykd] [{n + 1}/{len(items)}] {item}: done in an earlier attempt", flush=True)
            continue
        print(f"[raykd] [{n + 1}/{len(items)}] {item}: {method_name(mode, s.algorithm)} on {s.env}", flush=True)
        paths = RunPaths(checkpoints=ctx.out_dir / "checkpoints" / ctx.ray_name(item), curve=curve_path(ctx, item),
                         tensorboard=ctx.tensorboard_dir / ctx.ray_name(item))
        _, figures = train_one(s, mode, seed, paths, label=item)
        ctx.record([result_row(cfg, ctx, item, mode, seed, figures)])
    write_curves(cfg, ctx, [item_of(m, seed) for m, seed in items])
    return ctx.rows().to_dict("records")


def result_row(cfg, ctx, item: str, mode: str, seed: int, figures: dict) -> dict:
    """One results row per (mode, seed): the policy's size; returns, steps and throughput in ``extra``
    (RL has no accuracy, and no teacher to compute DS against)."""
    from raykd.rl.runner import method_name

    s = cfg.dpd
    extra = {k: v for k, v in figures.items() if k not in ("params", "wall_time_s")}
    return make_row(method=method_name(mode, s.algorithm), item=item, dataset=s.env,
                    student="mlp-" + "x".join(map(str, s.hidden)), params=float(figures["params"]),
                    accuracy=float("nan"), wall_time_s=figures["wall_time_s"], seed=seed,
                    cfg_hash=ctx.run_id.rsplit("-", 1)[-1], a=cfg.metric.a, size=cfg.metric.size,
                    eval_split="evaluation episodes" if s.evaluation_interval else "training episodes",
                    extra={"env": s.env, "mode": mode, "algorithm": s.algorithm, "curve": str(curve_path(ctx, item)),
                           **extra})


def write_curves(cfg, ctx, items: list[str]) -> None:
    """``curves.csv`` (every iteration of every item), ``curves_summary.csv`` and ``curves.png``."""
    from raykd.rl.runner import plot_curves, summarise_curves

    s = cfg.dpd
    curves = pd.concat([pd.read_csv(curve_path(ctx, item)) for item in items], ignore_index=True)
    curves.to_csv(ctx.out_dir / "curves.csv", index=False)
    summary = summarise_curves(curves)
    summary.to_csv(ctx.out_dir / "curves_summary.csv", index=False)
    plot_curves(summary, ctx.out_dir / "curves.png", f"{s.env} ({s.algorithm.upper()})", s.steps_per_learner,
                s.algorithm)
