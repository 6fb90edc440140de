"""Benchmark: DPD-PPO vs PPO vs two independent PPO peers on MuJoCo tasks, several seeds.

For each task it runs every (mode, seed) through ``raykd.rl.runner.run`` (RLlib, new API stack),
then prints a table of final and best mean return (mean +- std over seeds) and the environment
steps per second of DPD relative to two independent learners. Curves (CSV + PNG) per task go to
``benchmarks/out/dpd/<task>/``; the table and the budget go to ``benchmarks/out/dpd.json`` and a
small summary to ``benchmarks/dpd_summary.json``.

    flock /tmp/raykd-heavy.lock python benchmarks/dpd.py        # 2 tasks x 3 modes x 3 seeds, 8k steps per learner
    flock /tmp/raykd-heavy.lock python benchmarks/dpd.py --steps-per-learner 4000 --seeds 0   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd
import ray

from raykd.rl.runner import METHOD, run
from raykd.rl.settings import RLSettings

HERE = Path(__file__).resolve().parent


def summarise(env: str, rows: pd.DataFrame, settings: RLSettings) -> list[dict]:
    """One line per method: final/best return over seeds (plus PPO at the same per-learner steps)."""
    extra = pd.DataFrame([json.loads(e) for e in rows["extra"]])
    extra["method"] = rows["method"].to_numpy()
    lines = []
    for method, df in extra.groupby("method", sort=False):
        label = method + (" (same total steps)" if method == "ppo" and settings.single_budget == "total" else "")
        lines.append({"env": env, "method": label, "n_seeds": len(df),
                      "steps_per_learner": float(df["steps_per_learner"].mean()),
                      "final_mean": float(df["final_return"].mean()), "final_std": float(df["final_return"].std(ddof=0)),
                      "best_mean": float(df["best_return"].mean()), "best_std": float(df["best_return"].std(ddof=0)),
                      "steps_per_s": float(df["steps_per_s"].mean())})
        if method == "ppo" and "return_at_per_learner_budget" in df:
            at = df["return_at_per_learner_budget"]
            lines.append({"env": env, "method": "ppo (same per-learner steps)", "n_seeds": len(df),
                          "steps_per_learner": float(settings.steps_per_learner),
                          "final_mean": float(at.mean()), "final_std": float(at.std(ddof=0)),
                          "best_mean": float("nan"), "best_std": float("nan"), "steps_per_s": float("nan")})
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps-per-learner", type=int, default=8_000)
    p.add_argument("--train-batch-size", type=int, default=1024)
    p.add_argument("--minibatch-size", type=int, default=64)
    p.add_argument("--num-epochs", type=int, default=10)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=HERE / "out" / "dpd")
    args = p.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    start, table, budgets = time.perf_counter(), [], {}
    try:
        for env in args.envs:
            settings = RLSettings(env=env, seeds=args.seeds, steps_per_learner=args.steps_per_learner,
                                  train_batch_size=args.train_batch_size, minibatch_size=args.minibatch_size,
                                  num_epochs=args.num_epochs, alpha=args.alpha, distill_weight=args.distill_weight)
            budgets[env] = settings.model_dump()
            rows = run(settings, args.out / env)
            table += summarise(env, rows, settings)
            report(args, table, budgets, time.perf_counter() - start)  # written after every task
    finally:
        ray.shutdown()


def report(args: argparse.Namespace, table: list[dict], budgets: dict, wall: float) -> None:
    """Print the table and the throughput ratio; write ``out/dpd.json`` and ``dpd_summary.json``."""
    df = pd.DataFrame(table)
    speed = {}
    for env, d in df.groupby("env"):
        sps = d.set_index("method")["steps_per_s"]
        speed[env] = float(sps[METHOD["dpd"]] / sps[METHOD["independent"]])
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    for env, ratio in speed.items():
        print(f"{env}: DPD throughput = {ratio:.3f} x two independent learners (overhead {100 * (1 - ratio):.1f}%)")
    print(f"benchmark wall time so far {wall / 60:.1f} min", flush=True)

    result = {"table": table, "dpd_over_independent_steps_per_s": speed, "wall_time_s": wall,
              "budget": {"steps_per_learner": args.steps_per_learner, "seeds": args.seeds, "envs": list(budgets),
                         "ppo_single_steps": 2 * args.steps_per_learner, "train_batch_size": args.train_batch_size,
                         "minibatch_size": args.minibatch_size, "num_epochs": args.num_epochs,
                         "alpha": args.alpha, "distill_weight": args.distill_weight},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / "dpd.json").write_text(json.dumps({**result, "settings": budgets}, indent=1, default=float))
    (HERE / "dpd_summary.json").write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
