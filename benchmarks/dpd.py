"""Benchmark: DPD vs one learner vs two independent peers on MuJoCo tasks, several seeds (PPO or SAC).

For each task it runs every (mode, seed) as one ``method: dpd`` run (``raykd.run``, RLlib new API stack),
then prints a table of final and best mean return (mean +- std over seeds), whether the paper's claim
(DPD peers beat their baselines) holds on paired per-seed differences, and the environment steps per
second of DPD relative to two independent learners. Each task's run (results, curves CSV +
PNG, checkpoints, TensorBoard) goes to ``benchmarks/out/dpd/<task>/``, and rerunning the same command
resumes it (finished runs are skipped, unfinished ones continue from their checkpoints); the table and the budget go to ``benchmarks/out/dpd.json`` and a
small summary to ``benchmarks/dpd_summary.json``.

    flock /tmp/raykd-heavy.lock python benchmarks/dpd.py        # 2 tasks x 3 modes x 3 seeds, 8k steps per learner
    flock /tmp/raykd-heavy.lock python benchmarks/dpd.py --steps-per-learner 4000 --seeds 0   # quick look
    # where PPO learns (issue 16): Hopper, 5 seeds, 50k steps per peer (100k for one learner), 32 envs per
    # runner; seeds 0-2 and 3-4 as two processes, one per core, then one merged table, verdicts and plot
    python benchmarks/dpd.py --envs Hopper-v5 --seeds 0 1 2 --steps-per-learner 50000 --train-batch-size 2048 \
        --minibatch-size 128 --envs-per-runner 32 --out benchmarks/out/dpd_hopper &
    python benchmarks/dpd.py --envs Hopper-v5 --seeds 3 4 --steps-per-learner 50000 --train-batch-size 2048 \
        --minibatch-size 128 --envs-per-runner 32 --out benchmarks/out/dpd_hopper_b --summary /tmp/b.json; wait
    python benchmarks/dpd.py --envs Hopper-v5 --seeds 0 1 2 3 4 --steps-per-learner 50000 --train-batch-size 2048 \
        --minibatch-size 128 --envs-per-runner 32 --out benchmarks/out/dpd_hopper --merge benchmarks/out/dpd_hopper_b \
        --summarise-only --summary benchmarks/dpd_hopper_summary.json
    python benchmarks/dpd.py --algorithm sac --envs InvertedPendulum-v5 --seeds 0 1 2 --steps-per-learner 2500 \
        --train-batch-size 128 --training-intensity 64 --learning-starts 500 --rollout-fragment-length 16 \
        --out benchmarks/out/dpd_sac      # off-policy variant: writes dpd_sac.json and dpd_sac_summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import pandas as pd

import raykd
from raykd.metrics import SEED_VERDICT_RULE, paired_verdict
from raykd.rl.runner import last_finite, method_name, plot_curves, summarise_curves
from raykd.rl.settings import PPO_FIELDS, SAC_FIELDS, DPDSettings

HERE = Path(__file__).resolve().parent


def returns_from_curve(out_env: Path, extra: dict, seed: int) -> dict:
    """Final (last finite) and best peer-mean return of one run, read back from its saved curve."""
    curve = pd.read_csv(extra.get("curve") or out_env / "curves" / f"{extra['mode']}-s{seed}.csv")  # or an older layout
    per_iter = curve.groupby("iteration")["return"].mean()
    return {**extra, "final_return": last_finite(per_iter), "best_return": float(per_iter.max())}


def per_run(rows: pd.DataFrame, out_env: Path) -> pd.DataFrame:
    """One line per (method, seed) run: its figures, with returns read from its saved curve."""
    extra = pd.DataFrame([returns_from_curve(out_env, json.loads(e), int(seed))
                          for e, seed in zip(rows["extra"], rows["seed"])])
    extra["method"], extra["seed"] = rows["method"].to_numpy(), rows["seed"].astype(int).to_numpy()
    return extra


def summarise(env: str, extra: pd.DataFrame, settings: DPDSettings) -> list[dict]:
    """One line per method: final/best return over seeds (plus the single learner at the same
    per-learner steps)."""
    lines = []
    for method, df in extra.groupby("method", sort=False):
        single = method == method_name("single", settings.algorithm)
        label = method + (" (same total steps)" if single and settings.single_budget == "total" else "")
        lines.append({"env": env, "method": label, "n_seeds": len(df),
                      "steps_per_learner": float(df["steps_per_learner"].mean()),
                      "final_mean": float(df["final_return"].mean()), "final_std": float(df["final_return"].std(ddof=0)),
                      "best_mean": float(df["best_return"].mean()), "best_std": float(df["best_return"].std(ddof=0)),
                      "steps_per_s": float(df["steps_per_s"].mean())})
        if single and "return_at_per_learner_budget" in df:
            at = df["return_at_per_learner_budget"]
            lines.append({"env": env, "method": f"{method} (same per-learner steps)", "n_seeds": len(df),
                          "steps_per_learner": float(settings.steps_per_learner),
                          "final_mean": float(at.mean()), "final_std": float(at.std(ddof=0)),
                          "best_mean": float("nan"), "best_std": float("nan"), "steps_per_s": float("nan")})
    return lines


def claims(env: str, extra: pd.DataFrame, settings: DPDSettings) -> list[dict]:
    """The paper's claim that DPD peers beat their baselines, on paired per-seed differences of the
    final (peer-mean) return, each with its verdict (:data:`raykd.metrics.SEED_VERDICT_RULE`)."""
    dpd, independent, single = (method_name(m, settings.algorithm) for m in ("dpd", "independent", "single"))
    runs = {method: df.set_index("seed") for method, df in extra.groupby("method")}
    comparisons = [("DPD peers beat two independent peers (same steps each)", dpd, independent, "final_return"),
                   ("DPD peers beat one learner given both peers' steps", dpd, single, "final_return"),
                   ("DPD peers beat one learner given one peer's steps", dpd, single, "return_at_per_learner_budget")]
    out = []
    for claim, a, b, col in comparisons:
        if a not in runs or b not in runs or col not in runs[b]:
            continue
        out.append({"env": env, "claim": claim, **paired_verdict(runs[a]["final_return"] - runs[b][col])})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--envs", nargs="+", default=["HalfCheetah-v5", "Hopper-v5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps-per-learner", type=int, default=8_000)
    p.add_argument("--algorithm", choices=["ppo", "sac"], default="ppo")
    p.add_argument("--train-batch-size", type=int, default=1024,
                   help="PPO: env steps per iteration; SAC: replay samples per update")
    p.add_argument("--training-intensity", type=float, default=None, help="SAC: replayed / sampled steps")
    p.add_argument("--learning-starts", type=int, default=1000, help="SAC: steps sampled before updates start")
    p.add_argument("--rollout-fragment-length", type=int, default=None, help="env steps per sampling call")
    p.add_argument("--envs-per-runner", type=int, default=1,
                   help="copies of the task stepped together (RLlib's num_envs_per_env_runner): batched inference")
    p.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    p.add_argument("--minibatch-size", type=int, default=64)
    p.add_argument("--num-epochs", type=int, default=10)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--out", type=Path, default=HERE / "out" / "dpd")
    p.add_argument("--summary", type=Path, default=None,
                   help="where the small summary goes (default benchmarks/dpd_summary.json, or dpd_<algorithm>_summary.json)")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: rebuild the table from the results and curves already under --out")
    p.add_argument("--merge", type=Path, nargs="+", default=[],
                   help="with --summarise-only: also read the runs under these --out directories (the same "
                        "budget with other seeds, run as a parallel process); the merged curves go to <out>/<task>/curves_all.png")
    args = p.parse_args()
    if args.merge and not args.summarise_only:
        p.error("--merge reads finished runs: give it with --summarise-only")

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    start, table, judged, budgets = time.perf_counter(), [], [], {}
    for env in args.envs:
        settings = settings_of(args, env)
        budgets[env] = settings.model_dump()
        if args.summarise_only:
            dirs = [args.out, *args.merge]
            rows = pd.concat([pd.read_csv(d / env / "results.csv") for d in dirs], ignore_index=True)
            twice = rows[rows.duplicated(["method", "seed"], keep=False)]
            if len(twice):
                p.error(f"{env}: these (method, seed) runs are in more than one --out/--merge directory: "
                        f"{sorted(set(zip(twice['method'], twice['seed'].astype(int))))}")
            wall = float(rows["wall_time_s"].sum())  # the runs' own times, summed (parallel processes overlap)
            if args.merge:
                plot_merged(env, rows, settings, args.out / env / "curves_all.png")
        else:
            config = {"name": f"bench-{env}", "method": "dpd", "output_dir": str(args.out / env),
                      "ray": {"num_cpus": os.cpu_count(), "dashboard": False},
                      "dpd": settings.model_dump(include=settings.model_fields_set)}
            rows = raykd.run(config).table
            wall = time.perf_counter() - start
        extra = per_run(rows, args.out / env)
        table += summarise(env, extra, settings)
        judged += claims(env, extra, settings)
        report(args, table, judged, budgets, wall, settings.algorithm)  # written after every task


def plot_merged(env: str, rows: pd.DataFrame, settings: DPDSettings, path: Path) -> None:
    """Learning curves (mean +- std over every seed) of runs that several processes trained."""
    curves = pd.concat([pd.read_csv(json.loads(e)["curve"]) for e in rows["extra"]], ignore_index=True)
    summary = summarise_curves(curves)
    summary.to_csv(path.with_suffix(".csv"), index=False)
    plot_curves(summary, path, f"{env} ({settings.algorithm.upper()})", settings.steps_per_learner, settings.algorithm)
    print(f"wrote {path}")


def settings_of(args: argparse.Namespace, env: str) -> DPDSettings:
    """The ``dpd:`` settings of one task; the other algorithm's options (which a config refuses) are left out."""
    given = dict(env=env, algorithm=args.algorithm, seeds=args.seeds, steps_per_learner=args.steps_per_learner,
                 hidden=args.hidden, rollout_fragment_length=args.rollout_fragment_length,
                 train_batch_size=args.train_batch_size, alpha=args.alpha, distill_weight=args.distill_weight,
                 training_intensity=args.training_intensity, learning_starts=args.learning_starts,
                 minibatch_size=args.minibatch_size, num_epochs=args.num_epochs,
                 num_envs_per_env_runner=args.envs_per_runner)
    other = PPO_FIELDS if args.algorithm == "sac" else SAC_FIELDS
    return DPDSettings(**{k: v for k, v in given.items() if k not in other and v is not None})


def report(args: argparse.Namespace, table: list[dict], judged: list[dict], budgets: dict, wall: float,
           algorithm: str) -> None:
    """Print the table and the throughput ratio; write ``out/dpd.json`` and ``dpd_summary.json``."""
    df = pd.DataFrame(table)
    speed = {}
    for env, d in df.groupby("env"):
        sps = d.set_index("method")["steps_per_s"]
        speed[env] = float(sps[method_name("dpd", algorithm)] / sps[method_name("independent", algorithm)])
    pd.set_option("display.width", 160)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    for env, ratio in speed.items():
        print(f"{env}: DPD throughput = {ratio:.3f} x two independent learners (overhead {100 * (1 - ratio):.1f}%)")
    for c in judged:
        print(f"{c['env']}: {c['claim']}: {c['verdict']} (final return difference {c['mean']:+.1f} +- {c['std']:.1f}, "
              f"better on {c['better_on']}/{c['seeds']} seeds)")
    print(f"benchmark wall time so far {wall / 60:.1f} min", flush=True)

    result = {"table": table, "claims": judged, "claim_rule": SEED_VERDICT_RULE,
              "dpd_over_independent_steps_per_s": speed, "wall_time_s": wall,
              "budget": {"algorithm": algorithm, "steps_per_learner": args.steps_per_learner, "seeds": args.seeds, "envs": list(budgets),
                         "single_learner_steps": 2 * args.steps_per_learner, "train_batch_size": args.train_batch_size,
                         "minibatch_size": args.minibatch_size, "num_epochs": args.num_epochs,
                         "alpha": args.alpha, "distill_weight": args.distill_weight,
                         "training_intensity": args.training_intensity, "learning_starts": args.learning_starts,
                         "rollout_fragment_length": args.rollout_fragment_length, "hidden": args.hidden,
                         "envs_per_runner": args.envs_per_runner},
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (args.out.parent / f"{args.out.name}.json").write_text(json.dumps({**result, "settings": budgets}, indent=1, default=float))
    summary = args.summary or HERE / ("dpd_summary.json" if algorithm == "ppo" else f"dpd_{algorithm}_summary.json")
    summary.write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
